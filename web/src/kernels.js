// The JS side every compute kernel of ours shares (web/kernels/*.c: freestanding wasm32, a
// memory of its own, bump.h's allocator): instantiating one, checking its exports, allocating
// in its memory with an error that names the kernel.
// What it ignores: what a kernel computes (lm_head.js, expand_kernel.js) and fetching its .wasm
// (worker.js and load_worker.js compile it while the bundle downloads).

// -> the kernel's WebAssembly.Instance. source: a compiled WebAssembly.Module, or the .wasm
// bytes (Node tests).
export async function instantiateKernel(source) {
  if (source instanceof WebAssembly.Module) return WebAssembly.instantiate(source, {});
  return (await WebAssembly.instantiate(source, {})).instance;
}

// -> instance.exports, once it has every one of `names`; what: the kernel's name in errors.
export function kernelExports(instance, names, what) {
  const e = instance.exports;
  for (const name of names) {
    if (!(name in e)) throw new Error(`the ${what} lacks ${name}: rebuild the site (./build.sh site)`);
  }
  return e;
}

// -> (bytes) => the address of a block from the kernel's allocator `alloc` (an export: 0 when
// its memory cannot grow, which throws here).
export function kernelAllocator(alloc, what) {
  return (bytes) => {
    const p = alloc(bytes);
    if (!p) throw new Error(`out of memory: the ${what} could not grow its memory`);
    return p;
  };
}
