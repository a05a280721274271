// Imported by node_prelude.cjs while it waits for its start message, a few
// times (as distinct URLs): the first import of a module file sets up Node's
// ES module loader, and the next ones warm its code paths, so the code's own
// module, imported next, pays for neither.
export const warm = [1, 2, 3].map((n) => n * 2);
