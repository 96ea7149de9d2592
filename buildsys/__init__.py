"""hostpgo's build engine: toolchains, profiles, pinned sources, patches, stamped PGO/LTO stages, manifests."""
