'use strict';
// Runs one execution's Node.js code inside the sandbox.
//
// Started as `node node_prelude.cjs IN OUT`, where IN and OUT are pipes from
// and to the server carrying JSON lines. The first line received is the start
// message (code and the module path to run it from). The code runs as an ES
// module, so top-level await works, with callTool, callToolsParallel,
// setResult, installPackage and require as globals. stdout and stderr are
// plain logs and are never parsed.

const fs = require('fs');
const net = require('net');
const path = require('path');
const { pathToFileURL } = require('url');
const { createRequire } = require('module');

// Node cannot mark an inherited fd close-on-exec, so the channel pipes are
// reopened through /proc (libuv opens with O_CLOEXEC) and the inherited
// numbers closed: child processes of the code never get the channel.
function reopen(arg, flags) {
  const inherited = Number(arg);
  const fd = fs.openSync(`/proc/self/fd/${inherited}`, flags);
  fs.closeSync(inherited);
  return fd;
}
const inFd = reopen(process.argv[2], fs.constants.O_RDONLY);
const outFd = reopen(process.argv[3], fs.constants.O_WRONLY);
const pending = new Map();
let nextId = 0;
let closedReason = null;
let live = false; // a session's live interpreter (keep_state): stays for the next start

// Writes are synchronous (a blocking pipe) so that a result is delivered even
// if the code exits right after.
function send(message) {
  const data = Buffer.from(JSON.stringify(message) + '\n');
  let offset = 0;
  while (offset < data.length) {
    offset += fs.writeSync(outFd, data, offset);
  }
}

const socket = new net.Socket({ fd: inFd, readable: true, writable: false });
let buffered = '';
let onStart = null;
socket.setEncoding('utf8');
socket.on('data', (chunk) => {
  buffered += chunk;
  let newline;
  while ((newline = buffered.indexOf('\n')) >= 0) {
    const line = buffered.slice(0, newline);
    buffered = buffered.slice(newline + 1);
    const message = JSON.parse(line);
    if (message.type === 'start') {
      onStart(message);
      continue;
    }
    const waiter = pending.get(message.id);
    if (waiter) {
      pending.delete(message.id);
      if (pending.size === 0 && !live) socket.unref();
      waiter(message);
    }
  }
});
socket.on('close', () => {
  closedReason = 'the channel was closed';
  for (const [id, waiter] of pending) {
    pending.delete(id);
    waiter(null);
  }
});

// The socket keeps the process alive only while a reply is awaited.
function request(message) {
  const id = String(++nextId);
  return new Promise((resolve, reject) => {
    if (closedReason) {
      reject(new Error(`lost the connection to the sandbox server: ${closedReason}`));
      return;
    }
    pending.set(id, (reply) =>
      reply ? resolve(reply) : reject(new Error(`lost the connection to the sandbox server: ${closedReason}`)),
    );
    socket.ref();
    try {
      send({ ...message, id });
    } catch (err) {
      pending.delete(id);
      reject(err);
    }
  });
}

function decode(data) {
  try {
    return JSON.parse(data);
  } catch {
    return data;
  }
}

async function callTool(name, args) {
  if (typeof name !== 'string' || !name) throw new TypeError('callTool: name must be a non-empty string');
  const reply = await request({ type: 'tool_call', name, args: args ?? {} });
  if (reply.error) throw new Error(`tool '${name}' failed: ${reply.error}`);
  return decode(reply.data ?? '');
}

function callToolsParallel(calls) {
  if (!Array.isArray(calls)) throw new TypeError('callToolsParallel: calls must be an array of [name, args]');
  return Promise.all(calls.map((call) => callTool(call[0], call[1])));
}

function setResult(data, files) {
  files = files ?? [];
  if (!Array.isArray(files) || !files.every((f) => typeof f === 'string')) {
    throw new TypeError('setResult: files must be an array of file names');
  }
  const output = JSON.stringify(data === undefined ? null : data);
  send({ type: 'result', output, files });
}

async function installPackage(name) {
  if (typeof name !== 'string' || !name) throw new TypeError('installPackage: name must be a non-empty string');
  const reply = await request({ type: 'install', package: name });
  if (reply.error) throw new Error(`installPackage('${name}') failed: ${reply.error}`);
}

// Frames of this prelude (callTool and the like) show host paths and nothing of the code.
function withoutPreludeFrames(stack) {
  return stack.split('\n').filter((line) => !line.includes(__filename)).join('\n');
}

function reportError(err) {
  const text = err && err.stack ? withoutPreludeFrames(String(err.stack)) : String(err);
  process.stderr.write(text + '\n');
  try {
    send({ type: 'error', message: text });
  } catch {}
  if (!live) process.exit(1); // a live interpreter outlives an error of its code
}

// After the last 'exit' listener (the code's own included): send the exit
// code, then let go of the log pipes and the channel. The server answers the
// client on this while Node is still tearing down. Closing a number and
// opening /dev/null at once gives the number back (the lowest free one).
// Only Node's own emit counts (process._exiting): code may emit 'exit' itself.
const emit = process.emit;
process.emit = function (event, ...args) {
  const handled = emit.call(this, event, ...args);
  if (event === 'exit' && process._exiting) {
    try {
      // Read after the listeners, as Node does: one may set process.exitCode.
      send({ type: 'exit', code: (process.exitCode ?? args[0] ?? 0) & 0xff });
      for (const fd of [1, 2]) {
        fs.closeSync(fd);
        fs.openSync('/dev/null', 'w');
      }
      fs.closeSync(outFd);
    } catch {}
  }
  return handled;
};

process.on('uncaughtException', reportError);
process.on('unhandledRejection', reportError);
// The server's interrupt of a live interpreter (sent again until the code stops:
// one that comes before an evaluation runs does nothing). Nothing else sends it.
process.on('SIGINT', interrupt);
send({ type: 'ready' });

socket.unref();
socket.ref(); // until the start message arrives
// Set up the ES module loader while the start message is on its way (a
// process may be started ahead of its request): the first import pays it.
const WARMUP_IMPORTS = 3;
async function warmUp() {
  const url = pathToFileURL(path.join(__dirname, 'node_warmup.mjs')).href;
  for (let n = 1; n <= WARMUP_IMPORTS; n++) await import(`${url}?${n}`);
}
const loaderReady = warmUp().catch(() => {});

// The code's module file goes once it has run (unlink: rmSync loads more code first).
function removeModule(modulePath) {
  try {
    fs.unlinkSync(modulePath);
  } catch {}
}
// -- a session's live interpreter (keep_state) ---------------------------------
// Each execution is evaluated through the in-process inspector in V8's REPL
// mode: top-level let/const/class/function stay on the one global scope, may be
// declared again (as in a browser console), and top-level await works. Between
// executions the server stops this process and wakes it with the next start.
let inspectorSession = null;
let evaluation = null; // the running one: { token, finish }
let evaluations = 0;

function evaluationError(details) {
  const exception = details.exception || {};
  const text = exception.description ?? (exception.value !== undefined ? String(exception.value) : details.text);
  return withoutPreludeFrames(String(text))
    .split('\n')
    .filter((line) => !line.includes('node:inspector'))
    .join('\n');
}

function evaluate(code) {
  const token = ++evaluations;
  return new Promise((resolve) => {
    evaluation = { token, finish: resolve };
    const params = { expression: code, replMode: true, awaitPromise: true };
    inspectorSession.post('Runtime.evaluate', params, (err, reply) => {
      if (!evaluation || evaluation.token !== token) return; // interrupted meanwhile
      evaluation = null;
      if (err) {
        reportError(err);
        resolve({ code: 1, interrupted: false });
      } else if (reply.exceptionDetails) {
        const text = evaluationError(reply.exceptionDetails);
        process.stderr.write(text + '\n');
        send({ type: 'error', message: text });
        resolve({ code: 1, interrupted: false });
      } else {
        resolve({ code: 0, interrupted: false });
      }
    });
  });
}

// The server's SIGINT (timeout, cancel): stop waiting for the running
// evaluation. Its pending callbacks stay, and run when the code next runs. A
// synchronous loop never gets here: the server kills the interpreter instead.
function interrupt() {
  const current = evaluation;
  if (!current) return;
  evaluation = null;
  process.stderr.write('Interrupted\n');
  current.finish({ code: 1, interrupted: true });
}

async function runLive(start) {
  if (inspectorSession === null) {
    live = true;
    socket.ref(); // the next start message keeps the process alive
    inspectorSession = new (require('inspector').Session)();
    inspectorSession.connect();
  }
  Object.assign(process.env, start.env);
  Object.assign(globalThis, {
    callTool,
    callToolsParallel,
    setResult,
    installPackage,
    require: createRequire(start.module),
  });
  const { code, interrupted } = await evaluate(start.code);
  // Writes to a full pipe wait in Node: the output must be out before "idle",
  // after which this process is stopped.
  await Promise.all([process.stdout, process.stderr].map((stream) => new Promise((resolve) => stream.write('', resolve))));
  send({ type: 'idle', code: code & 0xff, interrupted });
}

onStart = (start) => {
  if (start.keep_state || live) {
    runLive(start);
    return;
  }
  socket.unref();
  Object.assign(process.env, start.env); // the request's own variables
  const modulePath = start.module;
  fs.mkdirSync(path.dirname(modulePath), { recursive: true });
  fs.writeFileSync(modulePath, start.code);
  Object.assign(globalThis, {
    callTool,
    callToolsParallel,
    setResult,
    installPackage,
    require: createRequire(modulePath),
  });
  loaderReady.then(() => import(pathToFileURL(modulePath).href)).then(
    () => removeModule(modulePath),
    (err) => {
      removeModule(modulePath);
      reportError(err);
    },
  );
};
