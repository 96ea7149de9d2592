"""Bazel: --copt/--linkopt arguments (or the same lines in a .user.bazelrc) computed from resolved flags (pure).

Bazel puts its compilation mode's flags (opt: -O2 -DNDEBUG) before the --copt values on each compile
line, so the profile's level given as a --copt wins; compilers and archivers reach the C++ toolchain
through --action_env (CC) and --repo_env.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..core.stages import ChannelFlag
from ..toolchain.flags import ResolvedFlags

NAME = "bazel"
CHANNELS = ("--compilation_mode", "--copt", "--host_copt", "--linkopt", "--action_env", "--repo_env", "--config",
            "bazelrc", "BAZEL_ARGS")
TOOLS = ("bazel",)
BAZELRC = ".user.bazelrc"


def arguments(rf: ResolvedFlags, *, compilation_mode: str = "opt") -> list[tuple[str, str, str]]:
    """(channel, value, why) for every setting, in command-line order."""
    out = [("--compilation_mode", compilation_mode, "engine: Bazel's own flags come before every --copt")]
    out += [("--action_env", f"{k}={v}", "toolchain (detected)") for k, v in sorted(rf.tools.items())
            if k in ("CC", "CXX")]
    out += [("--copt", f.value, f.why) for f in rf.cflags]
    out += [("--linkopt", f.value, f.why) for f in rf.ldflags]
    return out


def argv(rf: ResolvedFlags, **kw) -> list[str]:
    """The arguments after `bazel build`."""
    return [f"{channel}={value}" for channel, value, _why in arguments(rf, **kw)]


def bazelrc(rf: ResolvedFlags, *, config: str = "", **kw) -> str:
    """The same settings as .user.bazelrc lines (`build --copt=...`, or `build:CONFIG` for --config=CONFIG)."""
    head = f"build:{config}" if config else "build"
    return "".join(f"{head} {a}\n" for a in argv(rf, **kw))


def channel_flags(rf: ResolvedFlags, **kw) -> tuple[ChannelFlag, ...]:
    return tuple(ChannelFlag(channel, channel, value, why) for channel, value, why in arguments(rf, **kw))


def build_argv(targets: Sequence[str], rf: ResolvedFlags, **kw) -> list[str]:
    return ["bazel", "build", *argv(rf, **kw), *targets]
