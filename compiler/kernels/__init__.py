"""One module per family of kernels; each exposes lower_<op>(ctx, node, inputs..., output)."""
