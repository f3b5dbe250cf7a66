; A 256x256x256 int8 matmul split over 4 tasks by rows of A: each task loads its 64 rows of A
; and all of B, multiplies on the MAC array, and stores its 64 rows of the int32 result.
; Tensor names stand for their GDRAM addresses.   Run:  mlusim run examples/matmul.s --cores 4
.tensor a input  i8  [256, 256]
.tensor b const  i8  [256, 256] random(1)
.tensor c output i32 [256, 256]

.kernel matmul block tasks=4
    rdsr    r1, taskid
    muli    r2, r1, 16384                         ; 64 rows x 256 B of A per task
    muli    r3, r1, 65536                         ; 64 rows x 256 x 4 B of C per task
    dma     g2n, 0x0, [r2+a], 16384               ; my rows of A -> NRAM
    dma     g2w, 0x0, b, 65536, sig=cp            ; all of B -> WRAM (the ld queue is in order)
    matmul  dt=i8 dst=0x10000 a=0x0 b=0x0 m=64 k=256 n=256 wait=ld sig=st
    dma     n2g, [r3+c], 0x10000, 65536, wait=cp  ; my rows of C -> GDRAM
