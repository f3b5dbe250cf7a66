"""mlusim.compiler: lowers quantized conv/fc graphs to the mlusim ISA (see issue 3)."""
