// Imported by node_prelude.cjs while it waits for its start message: the first
// import of a module file sets up Node's ES module loader (milliseconds), so
// the code's own module, imported next, does not pay for it.
export {};
