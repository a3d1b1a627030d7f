// The kernels' memory: a bump allocator over the module's own wasm memory (freestanding: no
// malloc). Blocks are 16-byte aligned (v128 loads); memory grows in 64 KiB pages and never
// shrinks. Each kernel keeps its own `bump_top` (a static in its translation unit).
// What it ignores: freeing single blocks (a kernel resets the whole heap or never frees).
#pragma once
#include <stdint.h>

extern unsigned char __heap_base;
static uintptr_t bump_top = 0;

static inline uintptr_t bump_start(void) { return ((uintptr_t)&__heap_base + 15) & ~(uintptr_t)15; }

// -> a 16-byte-aligned block of `bytes`, or 0 when memory cannot grow.
static inline void *bump_alloc(uint32_t bytes) {
  if (!bump_top) bump_top = bump_start();
  uintptr_t p = bump_top, end = p + ((bytes + 15) & ~15u);
  uintptr_t have = __builtin_wasm_memory_size(0) * 65536u;
  if (end > have && __builtin_wasm_memory_grow(0, (end - have + 65535) / 65536) == (uintptr_t)-1)
    return 0;
  bump_top = end;
  return (void *)p;
}
