"""The OCI image of an optimized build: Debian base + the interpreter prefix + a venv with the runtime + host settings.

Four layers, each holding only what its step changed in the one rootfs they are built in
(`assemble`, `layers`):

1. base:    `mmdebstrap --variant=minbase` of the host's own suite and mirrors, plus the Debian packages that
            own every shared library the interpreter and the runtime's wheels load from outside themselves
            (found with ldd on this host, mapped with `dpkg -S`), plus the allocator packages (`base`);
2. python:  the installed prefix at /opt/hostpgo/python (a static-libpython build finds its stdlib from
            its own location; CPython's test suite is left out, the verify stage already ran it);
3. venv:    /opt/hostpgo/venv from wheels only (`pip --no-index`): this project with its `runtime` extra (and
            any rewritten wheel bolt-wheel's decision kept, `prepare(wheels=...)`, in place of the stock one);
4. runtime: the host settings files at /opt/hostpgo/host, the pre-generated built-in checkpoint under
            /var/lib/hostpgo, precompiled bytecode when the settings ask for it, and hostpgo-image.json.

The image is reproducible: the same inputs give the same layer, config and manifest digests (sorted tar
entries, mtimes clamped to REPRODUCIBLE_EPOCH, numeric owners, gzip without a timestamp, a fixed `created`;
`oci` writes the layout itself), so a build that changes only the host settings changes only the runtime
layer, and a registry or `docker load` reuses the other three. hostpgo-image.json beside the layout records
each layer's digest and diff_id, the config digest and the manifest digest.

The entrypoint applies the host settings before the interpreter starts (`python -m hostenv exec`),
so the allocator preload, its tunables, the launch mode, threads and GC policy are the image's defaults;
`-e HOSTPGO_HOST_SET=...` changes one key at run time. The image is verified the way it will run
(`verify`): unpacked again from the finished layout by umoci and chrooted, it must reproduce every golden
token digest of the build's verify workloads through its own entrypoint, and no shared library may be missing.

Everything needs root (mmdebstrap's root mode, chroot, mounting /proc); podman/docker are not used, so it
also works where containers cannot start. `skopeo` turns the layout into a docker-archive for `docker load`.
"""

from __future__ import annotations

from .assemble import LayerStep, assemble_layout
from .base import (
                   apt_sources,
                   base_command,
                   base_suite,
                   elf_files,
                   include_option,
                   is_elf,
                   library_packages,
                   owning_package,
                   parse_ldd,
)
from .inputs import check_host, image_requirements, prepare, resolve_settings
from .layers import LayerBlob, changes, snapshot, write_layer
from .model import (
                   DATA_DIR,
                   DEFAULT_CMD,
                   HOST_DIR,
                   IMAGE_SCHEMA,
                   IMAGE_TOOLS,
                   LAYER_NAMES,
                   PYTHON_DIR,
                   ROOT,
                   VENV_DIR,
                   AptSource,
                   ImageError,
                   ImageInputs,
                   entrypoint,
                   epoch_iso,
                   image_dir,
                   image_env,
                   labels,
                   layout_tag,
                   oci_arch,
                   tag_slug,
)
from .oci import ImageDigests, read_image
from .planner import RECORD_NAME, build_env, plan, project_digest, replaced_wheels, venv_install_argv
from .rootfs import chroot_argv, copy_prefix, extract_base, mounted, remove_stale
from .verify import check_digests, missing_in_image, verify_layout

__all__ = [
    "DATA_DIR", "DEFAULT_CMD", "HOST_DIR", "IMAGE_SCHEMA", "IMAGE_TOOLS", "LAYER_NAMES", "PYTHON_DIR", "RECORD_NAME",
    "ROOT", "VENV_DIR", "AptSource", "ImageDigests", "ImageError", "ImageInputs", "LayerBlob", "LayerStep",
    "apt_sources", "assemble_layout", "base_command", "base_suite", "build_env", "changes", "check_digests",
    "check_host", "chroot_argv", "copy_prefix", "elf_files", "entrypoint", "epoch_iso", "extract_base", "image_dir",
    "image_env", "image_requirements", "include_option", "is_elf", "labels", "layout_tag", "library_packages",
    "missing_in_image", "mounted", "oci_arch", "owning_package", "parse_ldd", "plan", "prepare", "project_digest",
    "read_image", "remove_stale", "replaced_wheels", "resolve_settings", "snapshot", "tag_slug", "venv_install_argv",
    "verify_layout", "write_layer",
]
