"""hostpgo's bundled DeepSeek-V3 inference runtime on MindSpore (CPU): model, weights, engine, workloads."""
