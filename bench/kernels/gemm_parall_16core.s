; Cambricon BANGC_Gemm_Tutorial step 4_1 (4_1_gemm_PARALL), rewritten in the mlusim ISA.
; The same GEMM as gemm_conv_1core.s split over 16 tasks (UNION4): task t does rounds i = 0..79 on
; column block i*16 + t. No buffer zeroing; the result block is stored as 256 separate 512-byte
; row copies, each a synchronous __memcpy in the tutorial (here: in order on the store queue).
.tensor a input  i8  [256, 256]
.tensor b input  i8  [327680, 256]
.tensor c output f16 [256, 327680]

.kernel gemm_parall union4 tasks=16
    rdsr     r5, taskid
    dma      g2n, 0x0, a, 65536                          ; input1NRAM = A, once
    dma      n2g, c, 0x30000, 64, sig=ld                 ; seeds the st->ld token the first round waits for
    li       r1, 0                                       ; round
    li       r2, 80                                      ; n / (taskDim * ROUND)
    muli     r3, r5, 65536                               ; B tile offset: (i*16 + t) * 256 * 256
    muli     r4, r5, 512                                 ; C column offset: (i*16 + t) * 256 * 2
    li       r8, 255
loop:
    dma      g2n, 0x20000, [r3+b], 65536, wait=st
    dma      n2n, 0x10000, 0x20000, 256, count=64 dstride=1024 sstride=256
    dma      n2n, 0x10100, 0x24000, 256, count=64 dstride=1024 sstride=256
    dma      n2n, 0x10200, 0x28000, 256, count=64 dstride=1024 sstride=256
    dma      n2n, 0x10300, 0x2c000, 256, count=64 dstride=1024 sstride=256
    dma      n2w, 0x0, 0x10000, 65536, sig=cp
    matmul   dt=i8 odt=f16 dst=0x30000 a=0x0 b=0x0 m=256 k=256 n=256 wait=ld sig=st
    li       r6, 0                                       ; row j
    add      r7, r4, r0                                  ; C address of row j
    li       r9, 0x30000                                 ; NRAM address of row j
    dma      n2g, [r7+c], [r9+0], 512, wait=cp           ; row 0 waits for the conv
rows:
    addi     r6, r6, 1
    addi     r7, r7, 655360
    addi     r9, r9, 512
    bge      r6, r8, last
    dma      n2g, [r7+c], [r9+0], 512
    jmp      rows
last:
    dma      n2g, [r7+c], [r9+0], 512, sig=ld            ; row 255 releases the next round's load
    addi     r3, r3, 1048576                             ; 16 tiles further
    addi     r4, r4, 8192
    addi     r1, r1, 1
    blt      r1, r2, loop
