"""Read a torch checkpoint's pickles without running them, and refuse anything not allow-listed.

A pickle is a program: GLOBAL / STACK_GLOBAL import a name (and a protocol >= 4 unpickler
follows dots in it, so `torch.serialization` + `os.system` reaches `os.system`), REDUCE /
NEWOBJ call what was imported, BUILD calls its `__setstate__`, INST / OBJ import and call in
one step, EXT* fetch a callable from the copyreg registry. This module emulates the pickle
machine's stack symbolically (strings, imported names and tuples are tracked; every other
value is opaque), so it knows, before anything runs, every name a pickle would import and what
each call receives. It refuses:

- a name that is not an exact (module, name) pair of the allow-list (no prefixes, no dots);
- a STACK_GLOBAL whose two names are not literal strings (computed names cannot be checked);
- INST, OBJ, EXT1/2/4 (torch.save never writes them);
- a call (REDUCE, NEWOBJ, NEWOBJ_EX) of anything but an allow-listed name, or of one in a
  way real files never do (`may_call`);
- BUILD / SETITEM / APPEND on an imported name itself (a class or function, not an instance);
- a persistent id other than torch's ('storage', ...) tuples (torch < 1.6 also pickled whole
  classes that way, which torch's restricted loader never resolves);
- `_codecs.encode` with an encoding other than latin1 (the only one protocol 2 bytes use);
- `numpy._reconstruct` other than as numpy writes it (`_reconstruct(ndarray, (0,), ...)`, an
  empty array its state then fills: a shape there allocates whatever it says);
- a Parameter rebuilt with state (`_rebuild_parameter_with_state` sets every attribute its
  state names on the Parameter): only `PARAMETER_STATE` (none: torch writes no attribute of
  its own there, only what code set on the Parameter);
- in a zip, a record that is compressed (torch.save stores every record as it is: a deflated
  storage record of 0.26 MB unpacked to a 256 MB tensor), or records larger in all than the file.

Which pickles are read mirrors `torch.load`: a file that starts with a zip local header is a
zip and every `*.pkl` in it is checked (a TorchScript archive, which torch.load would hand to
`torch.jit.load`, is refused); anything else is the legacy format, whose first five pickles
(magic, protocol, sys info, the object, the storage keys) are what torch unpickles. A legacy
tar archive is refused. No torch import here, so `identify` can use it too.
"""

from __future__ import annotations

import _compat_pickle
import io
import pickletools
import tarfile
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass

ZIP_MAGIC = b"PK\x03\x04"  # what torch.serialization._is_zipfile compares
LEGACY_PICKLES = 5  # magic number, protocol version, sys info, the object, storage keys
MAX_PICKLE_BYTES = 256 << 20  # tensors live outside the pickle; a bigger one is a zip bomb
LATIN1 = {"latin1", "latin-1", "iso-8859-1", "iso8859-1", "l1", "latin_1"}
_STRINGS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING",
            "BINSTRING", "STRING"}  # fmt: skip
_NEVER = {
    "INST": "INST (imports and calls a name in one step)",
    "OBJ": "OBJ (calls a class taken from the stack)",
    "EXT1": "EXT1 (a callable from the copyreg extension registry)",
    "EXT2": "EXT2 (a callable from the copyreg extension registry)",
    "EXT4": "EXT4 (a callable from the copyreg extension registry)",
}
_CALLS = {"REDUCE": 1, "NEWOBJ": 1, "NEWOBJ_EX": 2}  # stack items above the callable
_MUTATE = {"BUILD", "SETITEM", "SETITEMS", "APPEND", "APPENDS", "ADDITEMS"}


class PickleRefused(ValueError):
    """The pickle would do something the allow-list does not cover; the message says what."""


@dataclass(frozen=True)
class _Global:
    module: str
    name: str


@dataclass(frozen=True)
class _Tuple:
    items: tuple


class _Dict:
    """A dict the pickle builds: its string keys (other keys count as '<opaque>')."""

    def __init__(self) -> None:
        self.keys: list[str] = []

    def add(self, items: list) -> None:
        self.keys += [k if isinstance(k, str) else "<opaque>" for k in items[::2]]


PARAMETER_STATE: frozenset[str] = frozenset()  # attributes a rebuilt Parameter may receive
_INTS = {"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4"}
_NUMPY_RECONSTRUCT = {("numpy.core.multiarray", "_reconstruct"),
                      ("numpy._core.multiarray", "_reconstruct")}  # fmt: skip


_MARK = object()
_OPAQUE = object()


def resolve_name(module: str, name: str, protocol: int) -> tuple[str, str]:
    """The (module, name) the unpickler imports: protocol < 3 maps Python 2 names (fix_imports)."""
    if protocol < 3:
        if (module, name) in _compat_pickle.NAME_MAPPING:
            return _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    return module, name


def check_pickle(
    data: bytes,
    allowed: Callable[[str, str], bool],
    where: str = "data.pkl",
    may_call: Callable[[str, str, str], bool] | None = None,
) -> int:
    """Refuse (PickleRefused) a pickle that imports or calls anything `allowed` does not admit.

    `may_call(module, name, opcode)` narrows how an admitted name may be called (REDUCE calls
    it, NEWOBJ / NEWOBJ_EX call its `__new__`). Checks the first pickle in `data` and returns
    the offset just after its STOP.
    """
    stream = io.BytesIO(data)
    stack: list = []
    memo: dict[int, object] = {}
    protocol = 0

    def pop_mark() -> list:
        for i in range(len(stack) - 1, -1, -1):
            if stack[i] is _MARK:
                items = stack[i + 1 :]
                del stack[i:]
                return items
        raise PickleRefused(f"{where}: malformed pickle (no MARK on the stack)")

    def pop() -> object:
        # Like the C unpickler, never pop through a MARK: a pickle that does is malformed.
        if not stack or stack[-1] is _MARK:
            raise PickleRefused(f"{where}: malformed pickle (stack underflow)")
        return stack.pop()

    def admit(module: str, name: str) -> _Global:
        module, name = resolve_name(module, name, protocol)
        if "." in name or not name.isidentifier():
            raise PickleRefused(
                f"{where}: refers to the dotted or odd name {module}:{name!r}; only exact "
                "(module, name) pairs of the allow-list are loaded"
            )
        if not allowed(module, name):
            raise PickleRefused(f"{where}: refers to {module}.{name}")
        return _Global(module, name)

    try:
        for op, arg, pos in pickletools.genops(stream):
            name = op.name
            if name in _NEVER:
                raise PickleRefused(f"{where}: uses opcode {_NEVER[name]} at byte {pos}")
            if name == "PROTO":
                protocol = int(arg)
            elif name in _STRINGS:
                stack.append(arg.decode("latin-1") if isinstance(arg, bytes) else str(arg))
            elif name == "GLOBAL":
                module, _, attr = str(arg).partition(" ")
                stack.append(admit(module, attr))
            elif name == "STACK_GLOBAL":
                attr, module = pop(), pop()
                if not isinstance(module, str) or not isinstance(attr, str):
                    raise PickleRefused(
                        f"{where}: STACK_GLOBAL at byte {pos} imports a computed name, not two "
                        "literal strings"
                    )
                stack.append(admit(module, attr))
            elif name in _CALLS:
                above = [pop() for _ in range(_CALLS[name])]
                target = pop()
                if not isinstance(target, _Global):
                    raise PickleRefused(
                        f"{where}: {name} at byte {pos} calls something that is not an "
                        "allow-listed name"
                    )
                if may_call is not None and not may_call(target.module, target.name, name):
                    raise PickleRefused(
                        f"{where}: {name} at byte {pos} calls {target.module}.{target.name}, "
                        "which real checkpoints never call that way"
                    )
                _check_call(target, above[-1], where)
                stack.append(_OPAQUE)
            elif name in _INTS and not isinstance(arg, bool):
                stack.append(int(arg))
            elif name == "EMPTY_DICT":
                stack.append(_Dict())
            elif name == "DICT":
                built = _Dict()
                built.add(pop_mark())
                stack.append(built)
            elif name in ("SETITEM", "SETITEMS") and stack:
                items = [pop(), pop()][::-1] if name == "SETITEM" else pop_mark()
                target = stack[-1] if stack else None
                if isinstance(target, _Global):
                    raise PickleRefused(
                        f"{where}: {name} at byte {pos} changes {target.module}.{target.name} "
                        "itself, not an object built from it"
                    )
                if isinstance(target, _Dict):
                    target.add(items)
            elif name in ("PERSID", "BINPERSID"):
                pid = arg if name == "PERSID" else pop()
                _check_persistent_id(pid, where)
                stack.append(_OPAQUE)
            elif name == "MARK":
                stack.append(_MARK)
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[int(arg)] = stack[-1] if stack else _OPAQUE
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1] if stack else _OPAQUE
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                if int(arg) not in memo:
                    raise PickleRefused(f"{where}: reads memo slot {arg} that was never set")
                stack.append(memo[int(arg)])
            elif name == "DUP":
                stack.append(stack[-1] if stack else _OPAQUE)
            elif name in ("TUPLE", "TUPLE1", "TUPLE2", "TUPLE3"):
                n = {"TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3}.get(name)
                items = pop_mark() if n is None else [pop() for _ in range(n)][::-1]
                stack.append(_Tuple(tuple(items)))
            elif name == "POP" and stack and stack[-1] is _MARK:
                stack.pop()  # POP at a MARK drops the mark
            elif name == "STOP":
                return stream.tell()
            else:
                target = _generic(op, stack, pop, pop_mark)
                if name in _MUTATE and isinstance(target, _Global):
                    raise PickleRefused(
                        f"{where}: {name} at byte {pos} changes {target.module}.{target.name} "
                        "itself, not an object built from it"
                    )
    except PickleRefused:
        raise
    except Exception as error:  # genops: truncated stream, unknown opcode
        raise PickleRefused(f"{where}: not a readable pickle: {error}") from None
    raise PickleRefused(f"{where}: the pickle has no STOP")


def _generic(op: pickletools.OpcodeInfo, stack: list, pop, pop_mark) -> object:
    """Any other opcode: pop what pickletools says it consumes, push opaque results.

    Returns the deepest value it consumed (the object BUILD / SETITEM / APPEND change).
    """
    before = op.stack_before
    if pickletools.markobject in before:
        pop_mark()
        below = before.index(pickletools.markobject)
    else:
        below = len(before)
    consumed = [pop() for _ in range(below)]
    stack.extend(_OPAQUE for _ in op.stack_after)
    return consumed[-1] if consumed else None


def _check_call(target: _Global, args: object, where: str) -> None:
    items = args.items if isinstance(args, _Tuple) else ()
    if (target.module, target.name) in _NUMPY_RECONSTRUCT:
        kind = items[0] if items else None
        if not (
            isinstance(kind, _Global)
            and kind.name == "ndarray"
            and len(items) >= 2
            and items[1] == _Tuple((0,))
        ):
            raise PickleRefused(
                f"{where}: calls numpy's _reconstruct other than as numpy writes it "
                "(_reconstruct(ndarray, (0,), ...)): a shape there allocates what it says"
            )
    if (target.module, target.name) == ("torch._utils", "_rebuild_parameter_with_state"):
        state = items[3] if len(items) == 4 else None
        keys = state.keys if isinstance(state, _Dict) else ["<not a dict>"]
        extra = sorted(set(keys) - PARAMETER_STATE)
        if extra:
            raise PickleRefused(
                f"{where}: rebuilds a Parameter with the attributes {extra}, which torch "
                "itself never writes there (its loader would set each on the Parameter)"
            )
    if (target.module, target.name) == ("_codecs", "encode"):
        items = args.items if isinstance(args, _Tuple) else ()
        encoding = items[1] if len(items) == 2 else None
        if not isinstance(encoding, str) or encoding.lower() not in LATIN1:
            raise PickleRefused(
                f"{where}: calls _codecs.encode with encoding {encoding!r}; protocol 2 bytes "
                "use latin1 only"
            )


def _check_persistent_id(pid: object, where: str) -> None:
    """torch resolves persistent ids itself: tensor storages only, never a class."""
    kind = pid.items[0] if isinstance(pid, _Tuple) and pid.items else None
    if kind == "storage":
        return
    if kind == "module":
        raise PickleRefused(
            f"{where}: a whole model saved by torch < 1.6 (its classes travel as persistent ids, "
            "which torch's restricted loader does not read); in the code base that trained it, "
            "re-save it with a current torch: torch.save(torch.load(f, weights_only=False), f2)"
        )
    raise PickleRefused(f"{where}: a persistent id that is not a tensor storage")


def checkpoint_pickles(data: bytes) -> list[tuple[str, bytes]]:
    """(name, bytes) of every pickle torch.load would unpickle from this file, in order."""
    if data[:4] == ZIP_MAGIC:
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                names = archive.namelist()
                if len(set(names)) != len(names):
                    raise PickleRefused("the zip holds two members with the same name")
                if any(n == "constants.pkl" or n.endswith("/constants.pkl") for n in names):
                    raise PickleRefused(
                        "a TorchScript archive (constants.pkl), which torch.load would run "
                        "through torch.jit.load"
                    )
                _check_records(archive.infolist(), len(data))
                members = [i for i in archive.infolist() if i.filename.endswith(".pkl")]
                big = [i.filename for i in members if i.file_size > MAX_PICKLE_BYTES]
                if big:
                    raise PickleRefused(f"{big[0]} unpacks to more than {MAX_PICKLE_BYTES:,} bytes")
                pickles = [(i.filename, archive.read(i)) for i in members]
        except zipfile.BadZipFile as error:
            raise PickleRefused(f"a damaged zip: {error}") from None
        if not any(n == "data.pkl" or n.endswith("/data.pkl") for n, _ in pickles):
            raise PickleRefused("a zip without data.pkl is not a torch checkpoint")
        return pickles
    if tarfile.is_tarfile(io.BytesIO(data)):
        raise PickleRefused("a legacy tar checkpoint (torch < 0.4), which is not loaded")
    return [(f"pickle {i + 1} of the legacy file", chunk) for i, chunk in legacy_pickles(data)]


def _check_records(records: list[zipfile.ZipInfo], file_bytes: int) -> None:
    """torch.save stores every record uncompressed, so the records' sizes add up to less than
    the file: a compressed record, or sizes past the file's, would make torch allocate what
    the archive claims, not what it holds."""
    for record in records:
        if record.compress_type != zipfile.ZIP_STORED or record.file_size != record.compress_size:
            raise PickleRefused(
                f"{record.filename} is compressed ({record.compress_size:,} bytes unpacking to "
                f"{record.file_size:,}); torch.save stores every record as it is"
            )
    total = sum(record.file_size for record in records)
    if total > file_bytes:
        raise PickleRefused(
            f"the records claim {total:,} bytes in all, more than the file's {file_bytes:,}"
        )


def legacy_pickles(data: bytes) -> Iterable[tuple[int, bytes]]:
    """The pickles at the head of a legacy (torch < 1.6) file; raw storage bytes follow them."""
    stream = io.BytesIO(data)
    for i in range(LEGACY_PICKLES):
        start = stream.tell()
        if start >= len(data):
            raise PickleRefused(f"a legacy checkpoint that ends after {i} pickles")
        try:
            for _ in pickletools.genops(stream):
                pass
        except Exception as error:
            raise PickleRefused(f"pickle {i + 1}: not a readable pickle: {error}") from None
        yield i, data[start : stream.tell()]


def check_checkpoint(
    data: bytes,
    allowed: Callable[[str, str], bool],
    may_call: Callable[[str, str, str], bool] | None = None,
) -> None:
    """Refuse (PickleRefused) a checkpoint any of whose pickles steps outside `allowed`."""
    for where, chunk in checkpoint_pickles(data):
        check_pickle(chunk, allowed, where, may_call)
