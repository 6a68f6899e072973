"""The cross-run step cache: step fingerprints, cache keys, and the "cached from" mark.

A cached step (``@nbjobs.step(cache=True)``, or any step of ``@app.workflow(cache=True)``)
is looked up under a *key*: a SHA-256 of the workflow's name, the step's name, the
stored form of its arguments (artifacts by content digest, see
:meth:`nbjobs.codec.Codec.dumps` with ``check_keys=False``) and the fingerprint of the
step function's code, or the ``version`` the user gave instead.

The fingerprint is of the *function*, not of the notebook cell or module it lives in:
the bytecode, constants and names of its code object, recursively for the code of nested
functions, comprehensions and lambdas, and of the functions of its own module that it
calls by a global name (a helper edited in another cell is part of what the step does).
Line numbers, file names and docstrings are left out, so adding a cell above, moving the
function or editing unrelated code keeps the fingerprint, while editing its body changes
it.  What a fingerprint cannot see (a global constant, a file it reads, a library's
version) is what ``Cache(version=...)`` is for.

This module is plain data and hashing: the runtime computes keys with it, the store
keeps entries, and the notebook and dashboard read the mark of a cached checkpoint
with :func:`cached_from`.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import types
from collections.abc import Callable
from typing import Any

from .errors import ConfigurationError
from .schema import CACHED_FROM

#: Default argument values of these types are part of a fingerprint by their ``repr``;
#: others (objects whose ``repr`` holds an address) by their type.
_PLAIN = (str, int, float, bool, type(None), bytes)


#: Callables of C code: fingerprinted by their qualified name.
_BUILTINS = (
    types.BuiltinFunctionType,
    types.MethodDescriptorType,
    types.WrapperDescriptorType,
    types.MethodWrapperType,
    types.ClassMethodDescriptorType,
)
#: Those of them that may be bound to an object (``{}.get``, ``"a".upper``).
_BOUND_BUILTINS = (types.BuiltinMethodType, types.MethodWrapperType)


def cached_from(detail: str | None) -> str | None:
    """The job a cached checkpoint's value came from (its ``detail`` column), or None."""
    if not detail or CACHED_FROM not in detail:
        return None
    try:
        value = json.loads(detail).get(CACHED_FROM)
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def cache_key(workflow: str, step: str, args_text: str, fingerprint: str) -> str:
    """The key of a step's cache entry (64 hex digits)."""
    return step_key(workflow, step, key_part(fingerprint), args_text)


def key_part(text: str) -> bytes:
    """``text`` as one part of a key: its length, then its UTF-8 bytes (so that no
    two lists of parts hash the same bytes)."""
    data = text.encode("utf-8", "surrogatepass")
    return len(data).to_bytes(8, "big") + data


@functools.lru_cache(maxsize=1024)
def _workflow_hash(workflow: str) -> Any:
    """SHA-256 fed with a key's first part, made once per workflow and only ever
    copied: a hit hashes its own parts, not the seed and the name again."""
    return hashlib.sha256(b"nbjobs step cache 1\0" + key_part(workflow))


#: Arguments longer than this are hashed at each call, not kept in ``_known_key``.
_KNOWN_ARGS_CHARS = 1024


def step_key(workflow: str, step: str, fingerprint_part: bytes, args_text: str) -> str:
    """:func:`cache_key` with the fingerprint already a :func:`key_part` (a run keeps it
    per step function): the same bytes in the same order, so the same key.  The keys
    of short arguments are remembered: a step hit again and again (each job of a
    pipeline run anew) looks its key up instead of hashing it."""
    if len(args_text) <= _KNOWN_ARGS_CHARS:
        return _known_key(workflow, step, fingerprint_part, args_text)
    return _hashed_key(workflow, step, fingerprint_part, args_text)


def _hashed_key(workflow: str, step: str, fingerprint_part: bytes, args_text: str) -> str:
    h = _workflow_hash(workflow).copy()
    h.update(key_part(step) + fingerprint_part + key_part(args_text))
    return h.hexdigest()


_known_key = functools.lru_cache(maxsize=4096)(_hashed_key)


def unwrap_step(fn: Any, args: tuple, kwargs: dict) -> tuple[Any, tuple, dict]:
    """The function a step really runs, with the arguments it gets: a
    ``functools.partial``'s bound arguments, and a bound method's object, are arguments
    (they go into the digest; an object with no stored form makes the step uncached)."""
    while True:
        if isinstance(fn, functools.partial):
            args = (*fn.args, *args)
            kwargs = {**fn.keywords, **kwargs}
            fn = fn.func
        elif isinstance(fn, types.MethodType):
            args = (fn.__self__, *args)
            fn = fn.__func__
        elif isinstance(fn, _BOUND_BUILTINS) and not isinstance(
            getattr(fn, "__self__", None), (types.ModuleType, type(None))
        ):
            # ``rates.get``: the dict is an argument; ``math.sqrt`` is bound to a module.
            args = (fn.__self__, *args)
            fn = getattr(type(fn.__self__), fn.__name__, fn)
        else:
            return fn, args, kwargs


def step_fingerprint(fn: Any) -> str:
    """A fingerprint of what ``fn`` runs; see the module docstring.

    A callable object (an instance with ``__call__``) has state a fingerprint cannot
    see: caching it needs an explicit ``Cache(version=...)``.
    """
    h = hashlib.sha256(b"nbjobs step fingerprint 1\0")
    _feed_function(h, fn, set())
    return h.hexdigest()[:16]


def _feed_function(h: Any, fn: Any, seen: set[int]) -> None:
    if isinstance(fn, types.MethodType):
        h.update(f"method of {type(fn.__self__).__qualname__}\0".encode())
        fn = fn.__func__
    if not isinstance(fn, types.FunctionType):
        if isinstance(fn, (*_BUILTINS, type)):
            h.update(f"{getattr(fn, '__module__', '')}.{fn.__qualname__}\0".encode())
            return
        raise ConfigurationError(
            f"cannot fingerprint the step function {fn!r} (a {type(fn).__name__}): its "
            "state is not code; cache it with nbjobs.Cache(version='...') and change the "
            "version when its results change"
        )
    if id(fn) in seen:
        h.update(b"<recursion>\0")
        return
    seen.add(id(fn))
    code = fn.__code__
    h.update(_code_digest(code))
    h.update(_defaults_text(fn).encode("utf-8", "surrogatepass"))
    # Closures: a function a nested step closes over is part of it.
    for cell in fn.__closure__ or ():
        try:
            inner = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        if isinstance(inner, types.FunctionType):
            _feed_function(h, inner, seen)
    # Helpers of the same module called by a global name (looked up each time: a helper
    # redefined in a later cell changes the step).
    module = fn.__module__
    globals_ = fn.__globals__
    for name in _global_names(code):
        helper = globals_.get(name)
        if isinstance(helper, types.FunctionType) and helper.__module__ == module:
            h.update(f"\0global {name}\0".encode())
            _feed_function(h, helper, seen)


def _defaults_text(fn: types.FunctionType) -> str:
    values = list(fn.__defaults__ or ()) + sorted((fn.__kwdefaults__ or {}).items())
    return repr([v if isinstance(v, _PLAIN) else type(v).__qualname__ for v in values])


@functools.lru_cache(maxsize=4096)
def _code_digest(code: types.CodeType) -> bytes:
    """The digest of a code object without its line numbers, file name or docstring.

    Memoized per code object: ``code.__eq__`` compares more than this digest reads (line
    numbers too), so equal code objects always have equal digests.
    """
    h = hashlib.sha256()
    _feed_code(h, code)
    return h.digest()


def _feed_code(h: Any, code: types.CodeType) -> None:
    consts = list(code.co_consts)
    # A function's docstring is its first constant (3.11): leave it out.
    if (
        consts
        and isinstance(consts[0], str)
        and code.co_flags & inspect.CO_NEWLOCALS
        and _is_docstring(code)
    ):
        consts[0] = None
    fields = (
        code.co_argcount,
        code.co_posonlyargcount,
        code.co_kwonlyargcount,
        code.co_flags,
        code.co_names,
        code.co_varnames,
        code.co_freevars,
        code.co_cellvars,
    )
    h.update(repr(fields).encode("utf-8", "surrogatepass"))
    h.update(code.co_code)
    for const in consts:
        if isinstance(const, types.CodeType):
            h.update(b"\0code\0")
            _feed_code(h, const)
        else:
            h.update(b"\0const\0" + repr(const).encode("utf-8", "surrogatepass"))


def _is_docstring(code: types.CodeType) -> bool:
    """Whether the first constant of a function's code is its docstring (not a string
    the body uses): the code never loads constant 0 then."""
    import dis

    for instruction in dis.get_instructions(code):
        if instruction.opname == "LOAD_CONST" and instruction.arg == 0:
            return False
    return True


@functools.lru_cache(maxsize=4096)
def _global_names(code: types.CodeType) -> tuple[str, ...]:
    """The global names ``code`` and its nested code load, in order, once each."""
    import dis

    names: dict[str, None] = {}
    stack = [code]
    while stack:
        current = stack.pop()
        for instruction in dis.get_instructions(current):
            if instruction.opname in ("LOAD_GLOBAL", "LOAD_NAME"):
                names[instruction.argval] = None
        stack.extend(c for c in current.co_consts if isinstance(c, types.CodeType))
    return tuple(names)


def fingerprint_or_version(fn: Callable[..., Any], version: str | None) -> str:
    """The explicit ``version`` when given, else the step function's fingerprint."""
    return f"version:{version}" if version is not None else step_fingerprint(fn)
