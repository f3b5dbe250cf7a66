"""The SimPy engine: cores, clusters, DRAM and the fabric between them."""
