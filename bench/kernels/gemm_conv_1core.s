; Cambricon BANGC_Gemm_Tutorial step 3 (3_gemm_CONV), rewritten in the mlusim ISA.
; int8 GEMM C[M, N] = A[M, K] . B[N, K]^T, M = K = 256, N = 327680, one core (BLOCK task), half output.
; Per 256-column round, strictly one after another (the tutorial's synchronous __memcpy calls):
;   zero two 64 KB NRAM buffers; load a 64 KB B tile; reorder it into the MLU270 WRAM layout with
;   four strided NRAM->NRAM copies (64 segments of 256 B); copy it NRAM->WRAM; one __bang_conv
;   (here: matmul) producing 256 x 256 half; store it with one strided copy of 256 rows of 512 B.
; Our matmul reads b as plain [n, k] rows, so the reorder is kept for its cost only: it permutes
; the columns of each 256-wide block of C exactly as the tutorial's layout does.
.tensor a input  i8  [256, 256]
.tensor b input  i8  [327680, 256]
.tensor c output f16 [256, 327680]

.kernel gemm_conv block tasks=1
    dma      g2n, 0x0, a, 65536                          ; input1NRAM = A, once
    dma      n2g, c, 0x30000, 64, sig=cp                 ; seeds the st->cp token the first round waits for
    li       r1, 0                                       ; round
    li       r2, 1280                                    ; n / ROUND
    li       r3, 0                                       ; byte offset of the B tile
    li       r4, 0                                       ; byte offset of the C column block
loop:
    vset     dt=f16 dst=0x20000 n=32768 value=0 wait=st  ; __bang_write_zero(input2NRAM_tmp)
    vset     dt=f16 dst=0x10000 n=32768 value=0 sig=ld   ; __bang_write_zero(input2NRAM)
    dma      g2n, 0x20000, [r3+b], 65536, wait=cp        ; B tile, 256 rows of k bytes
    dma      n2n, 0x10000, 0x20000, 256, count=64 dstride=1024 sstride=256
    dma      n2n, 0x10100, 0x24000, 256, count=64 dstride=1024 sstride=256
    dma      n2n, 0x10200, 0x28000, 256, count=64 dstride=1024 sstride=256
    dma      n2n, 0x10300, 0x2c000, 256, count=64 dstride=1024 sstride=256
    dma      n2w, 0x0, 0x10000, 65536, sig=cp            ; input2WRAM
    matmul   dt=i8 odt=f16 dst=0x30000 a=0x0 b=0x0 m=256 k=256 n=256 wait=ld sig=st
    dma      n2g, [r4+c], 0x30000, 512, count=256 dstride=655360 sstride=512 wait=cp sig=cp
    addi     r3, r3, 65536
    addi     r4, r4, 512
    addi     r1, r1, 1
    blt      r1, r2, loop
