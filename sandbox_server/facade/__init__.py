"""The HTTP facade: the documented JSON API of the original service, on the same core.

    POST   /execute                        run code; tool calls go to the request's callback_url
    GET    /health                         200 {"status": "ready"}, 503 while shutting down
    DELETE /workspace/{session_id}         204
    POST   /workspace/{session_id}/reset   200 {"had_state": bool}: ends the live interpreter

Field names are those of the original HTTP service, so its clients work
unchanged, and a field it does not know is refused rather than ignored, so a
typo (`session` for `session_id`) does not pass unnoticed. Our extensions
(`keep_state` in, `state_kept`, `fresh_state`, `fresh_state_reason` out, only
when `keep_state` was sent) are absent from the exchanges of old clients.

Errors are `{"error": "...", "code": "..."}`. `code` is the gRPC status code
name of the same failure, so clients of both transports read one vocabulary
instead of matching words in messages (`errors.Code` holds both mappings):

    400  INVALID_ARGUMENT     a malformed body, an unknown field, a limit exceeded
    413  INVALID_ARGUMENT     a body over MAX_BODY (32 MiB)
    415  INVALID_ARGUMENT     a POST /execute body that is not application/json
    401  UNAUTHENTICATED      a missing or wrong bearer token (SANDBOX_AUTH_TOKEN)
    403  PERMISSION_DENIED    a foreign Origin or Host, or a caller inside a sandbox
    404  NOT_FOUND            no such endpoint
    405  UNIMPLEMENTED        a method the endpoint does not take (gRPC's answer
                              to a method the server does not have)
    409  FAILED_PRECONDITION  DELETE of a session that has a running execution;
                              keep_state in a busy session, or with stateful sessions off
    503  RESOURCE_EXHAUSTED   at capacity (executions, sessions): retry later
    503  UNAVAILABLE          shutting down; GET /health's 503 carries it too

Only programs may call it, not web pages: a request from a browser page
(an `Origin` of another site) or through a rebound DNS name (a `Host` that is
not this server's) is refused with 403, and POST /execute takes only
`application/json` (415), which a page cannot send cross-site without a CORS
preflight, and this server grants none.

Each request is adapted onto `Sandbox.open()` and its `Execution`, exactly as
the gRPC servicer does, rather than looping back through a gRPC client. Both
adapters live in one process and one event loop, so the core is the honest
seam: the same validation, admission and capacity count, without a second
serialization, a loopback connection to manage, or error codes translated
twice. Nothing about an execution is decided here.

The client's `execution_id` is only echoed in tool callbacks; the core names
the execution itself, so a client reusing an id cannot collide with another
run's scratch workspace.

Modules: `app` (listener, middleware, endpoints), `guards` (who may call, how
many connections), `request` (the body, parsed and bounded), `callbacks` (tool
calls to callback_url), `response` (errors and the streamed result).
"""

from .app import Facade
from .request import MAX_BODY, ExecuteRequest, parse_execute

__all__ = ["MAX_BODY", "ExecuteRequest", "Facade", "parse_execute"]
