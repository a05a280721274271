// Sandboxed Node.js code: a small job whose answer comes back with setResult.
//
// Run it from the repository root with the sandbox running (`make run`):
//
//     .venv/bin/oasis-sandbox exec examples/job.js --runtime node
//
// `oasis-sandbox exec` has no tools to offer, so this job calls none; from a
// program (GrpcRunner with a dispatch) the same code could `await callTool(...)`.

const primes = [];
for (let n = 2; primes.length < 10; n++) {
  if (primes.every((p) => n % p !== 0)) primes.push(n);
}
console.log(`first ten primes: ${primes.join(", ")}`);

setResult({ primes, sum: primes.reduce((a, b) => a + b, 0), node: process.version });
