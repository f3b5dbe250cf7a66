"""Functional semantics of every instruction (numpy, bit-exact), one module per unit that runs it:
`scalar`, `dma`, `mac` (the MAC array) and `vector`; `base` holds what they share. The ISA table
(table.py) points each opcode at its functions here.
"""
