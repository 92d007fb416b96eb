"""A compiler for the FHIRPath subset that FHIR R4 search parameter expressions use.

Search parameters define what to index with FHIRPath (https://hl7.org/fhir/R4/search.html#table,
https://hl7.org/fhirpath/N1/). The expressions for the resources sharedcare stores use a small part of
the language, which this module compiles once into Python closures over FHIR JSON:

- paths `Observation.component.code` (lists are flattened), unions `a | b`;
- choice elements: `Observation.effective` yields `effectiveDateTime`, `effectivePeriod`, …; casts
  `(Observation.value as Quantity)`, `Observation.value.as(Quantity)`, `ofType(Quantity)`;
- `where(…)` with `resolve() is Patient` (decided from the reference itself, never by fetching it) or
  with a comparison such as `system = 'phone'`;
- `exists()`, `=`, `!=`, `and`, string/boolean/number literals (for `Patient.deceased.exists() and
  Patient.deceased != false`).

Evaluation returns items `(node, fhir_type)`: the JSON node and its FHIR datatype ("CodeableConcept",
"dateTime", "BackboneElement", …) or None when unknown. Types come from an element table (path → the
FHIR types of that element; more than one for a choice element) that the caller passes in, so that the
compiler knows `Observation.value` is `valueQuantity`, `valueString`, … without a schema of its own.
Anything outside the subset raises UnsupportedExpression at compile time.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from engine.search.normalise import reference_type

Item = tuple[Any, str | None]
"""One member of a FHIRPath collection: a JSON node and its FHIR type (None when unknown)."""

Collection = list[Item]
ElementLookup = Callable[[str], Sequence[str] | None]
"""Path ("Observation.value", "HumanName.family") → the FHIR types of that element, or None if unknown.

A type "BackboneElement" means the element's children are looked up under its own path; "#Path" means
a content reference (its children are those of Path)."""

_RESOURCE_BASES = frozenset({"Resource", "DomainResource"})
_FUNCTIONS = frozenset({"where", "as", "ofType", "exists", "resolve"})

# FHIR type specialisations relevant to `as`/`is`: https://hl7.org/fhir/R4/datatypes.html
_PARENT_TYPE = {
    "Age": "Quantity",
    "Count": "Quantity",
    "Distance": "Quantity",
    "Duration": "Quantity",
    "MoneyQuantity": "Quantity",
    "SimpleQuantity": "Quantity",
    "code": "string",
    "id": "string",
    "markdown": "string",
    "canonical": "uri",
    "url": "uri",
    "oid": "uri",
    "uuid": "uri",
    "positiveInt": "integer",
    "unsignedInt": "integer",
}


class UnsupportedExpression(ValueError):
    """The expression uses FHIRPath outside the subset this compiler handles."""


# --- parsing -------------------------------------------------------------------------------------

_TOKEN_RE = re.compile(
    r"\s*(?:(?P<string>'(?:[^'\\]|\\.)*')|(?P<number>\d+(?:\.\d+)?)"
    r"|(?P<ident>[A-Za-z_][A-Za-z0-9_]*|`[^`]+`)|(?P<op>!=|[.()|=,])|(?P<bad>\S))"
)


@dataclass(frozen=True, slots=True)
class Ident:
    name: str


@dataclass(frozen=True, slots=True)
class Call:
    name: str
    args: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Dot:
    left: Node
    right: Ident | Call


@dataclass(frozen=True, slots=True)
class Union:
    left: Node
    right: Node


@dataclass(frozen=True, slots=True)
class TypeOp:
    op: str  # "as" or "is"
    operand: Node
    type_name: str


@dataclass(frozen=True, slots=True)
class Compare:
    op: str  # "=" or "!="
    left: Node
    right: Node


@dataclass(frozen=True, slots=True)
class And:
    left: Node
    right: Node


@dataclass(frozen=True, slots=True)
class Literal:
    value: str | bool | int | float
    type_name: str


Node = Ident | Call | Dot | Union | TypeOp | Compare | And | Literal


def _tokenise(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    for match in _TOKEN_RE.finditer(text):
        kind = match.lastgroup
        if kind is None:
            continue
        if kind == "bad":
            raise UnsupportedExpression(f"unexpected {match.group(kind)!r} in {text!r}")
        tokens.append((kind, match.group(kind)))
    return tokens


class _Parser:
    """Recursive descent over the subset, with FHIRPath's precedence: `.` > `as`/`is` > `|` > `=`/`!=` >
    `and` (https://hl7.org/fhirpath/N1/#operator-precedence)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenise(text)
        self.pos = 0

    def parse(self) -> Node:
        node = self._and()
        if self.pos != len(self.tokens):
            raise UnsupportedExpression(f"unexpected {self.tokens[self.pos][1]!r} in {self.text!r}")
        return node

    def _peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def _accept(self, value: str) -> bool:
        token = self._peek()
        if token is not None and token[1] == value and token[0] in ("op", "ident"):
            self.pos += 1
            return True
        return False

    def _expect(self, value: str) -> None:
        if not self._accept(value):
            raise UnsupportedExpression(f"expected {value!r} in {self.text!r}")

    def _and(self) -> Node:
        node = self._equality()
        while self._accept("and"):
            node = And(node, self._equality())
        return node

    def _equality(self) -> Node:
        node = self._union()
        for op in ("=", "!="):
            if self._accept(op):
                return Compare(op, node, self._union())
        return node

    def _union(self) -> Node:
        node = self._type_op()
        while self._accept("|"):
            node = Union(node, self._type_op())
        return node

    def _type_op(self) -> Node:
        node = self._path()
        for op in ("as", "is"):
            if self._accept(op):
                return TypeOp(op, node, self._type_name())
        return node

    def _type_name(self) -> str:
        token = self._peek()
        if token is None or token[0] != "ident":
            raise UnsupportedExpression(f"expected a type name in {self.text!r}")
        self.pos += 1
        name = token[1]
        if name in ("FHIR", "System") and self._accept("."):
            return self._type_name()
        return name.strip("`")

    def _path(self) -> Node:
        node = self._term()
        while self._accept("."):
            node = Dot(node, self._invocation())
        return node

    def _term(self) -> Node:
        token = self._peek()
        if token is None:
            raise UnsupportedExpression(f"unexpected end of {self.text!r}")
        kind, value = token
        if kind == "op" and value == "(":
            self.pos += 1
            node = self._and()
            self._expect(")")
            return node
        if kind == "string":
            self.pos += 1
            return Literal(value[1:-1].replace("\\'", "'"), "string")
        if kind == "number":
            self.pos += 1
            return Literal(
                float(value) if "." in value else int(value), "decimal" if "." in value else "integer"
            )
        if kind == "ident" and value in ("true", "false"):
            self.pos += 1
            return Literal(value == "true", "boolean")
        return self._invocation()

    def _invocation(self) -> Ident | Call:
        token = self._peek()
        if token is None or token[0] != "ident":
            raise UnsupportedExpression(f"expected a name in {self.text!r}")
        self.pos += 1
        name = token[1].strip("`")
        if not self._accept("("):
            return Ident(name)
        args: list[Node] = []
        if not self._accept(")"):
            args.append(self._and())
            while self._accept(","):
                args.append(self._and())
            self._expect(")")
        return Call(name, tuple(args))


def parse(expression: str) -> Node:
    """Parse an expression of the supported subset into its syntax tree."""
    return _Parser(expression).parse()


def split_union(expression: str) -> list[str]:
    """The top-level members of a union, as text: "A.b | (B.c as X)" → ["A.b", "(B.c as X)"].

    Used to give each resource type only its own part of a multi-base search parameter.
    """
    parts: list[str] = []
    depth = 0
    start = 0
    quoted = False
    for i, char in enumerate(expression):
        if char == "'" and (i == 0 or expression[i - 1] != "\\"):
            quoted = not quoted
        elif not quoted and char == "(":
            depth += 1
        elif not quoted and char == ")":
            depth -= 1
        elif not quoted and depth == 0 and char == "|":
            parts.append(expression[start:i].strip())
            start = i + 1
    parts.append(expression[start:].strip())
    return [p for p in parts if p]


def root_name(expression: str) -> str | None:
    """The first identifier of an expression ("(Observation.value as X)" → "Observation")."""
    match = re.match(r"[\s(]*([A-Za-z_][A-Za-z0-9_]*)", expression)
    return match.group(1) if match else None


# --- compiling -----------------------------------------------------------------------------------

Evaluate = Callable[[Collection], Collection]
Step = tuple[tuple[str, "str | None"], ...]
"""One member access as the JSON keys it may read, each with the FHIR type of what it finds (several for
a choice element: ("valueQuantity", "Quantity"), ("valueString", "string"), …)."""


@dataclass(frozen=True, slots=True)
class _Static:
    """What is known at compile time about a collection: where its children are looked up, its
    possible types, and whether it is the resource itself (so a leading type name filters it)."""

    context: str | None
    types: tuple[str, ...] | None
    is_root: bool = False


@dataclass(frozen=True, slots=True)
class _Compiled:
    fn: Evaluate
    static: _Static
    # A non-empty result needs one of these top-level keys in the resource; None = cannot tell.
    root_keys: frozenset[str] | None
    # Set when the expression only navigates (so navigations fuse and casts prune keys statically).
    steps: tuple[Step, ...] | None = None
    # The steps start at the resource itself (after its leading type name).
    rooted: bool = False


def _navigation(
    steps: tuple[Step, ...], static: _Static, rooted: bool, root_keys: frozenset[str] | None
) -> _Compiled:
    if rooted:
        root_keys = frozenset(key for key, _ in steps[0]) if steps else None
    return _Compiled(_walker(steps), static, root_keys, steps, rooted)


@dataclass(frozen=True, slots=True)
class CompiledExpression:
    """A compiled expression for one resource type: call it with the resource's JSON.

    `root_keys`: the top-level JSON keys of which at least one must be present for a non-empty result
    (None when the result may be non-empty regardless, e.g. `exists()`); callers use it to skip
    expressions cheaply. `second_keys` narrows that for a path through one top-level element
    (`Observation.meta.profile`): when that element is an object, it must hold one of these keys (None
    when there is no such condition). `evaluate` is the compiled closure itself, for callers that have
    checked the resource's type: it takes the collection `[(resource, resource_type)]`.
    """

    expression: str
    resource_type: str
    root_keys: frozenset[str] | None
    evaluate: Evaluate
    second_keys: frozenset[str] | None = None

    def __call__(self, resource: Mapping[str, Any]) -> Collection:
        if resource.get("resourceType") != self.resource_type:
            return []
        return self.evaluate([(resource, self.resource_type)])


def compile_expression(expression: str, resource_type: str, lookup: ElementLookup) -> CompiledExpression:
    """Compile `expression`, evaluated on resources of `resource_type`, into a closure.

    `lookup` gives the FHIR types of an element path (see ElementLookup); an element it does not know
    is navigated untyped. Raises UnsupportedExpression for FHIRPath outside the subset.
    https://hl7.org/fhir/R4/search.html#table
    """
    compiler = _Compiler(resource_type, lookup)
    compiled = compiler.compile(parse(expression), _Static(resource_type, (resource_type,), is_root=True))
    return CompiledExpression(
        expression, resource_type, compiled.root_keys, compiled.fn, _second_keys(compiled)
    )


def _second_keys(compiled: _Compiled) -> frozenset[str] | None:
    steps = compiled.steps
    if not compiled.rooted or steps is None or len(steps) < 2 or len(steps[0]) != 1:
        return None
    return frozenset(key for key, _ in steps[1])


def json_suffix(fhir_type: str) -> str:
    """The suffix a choice element takes in FHIR JSON: "dateTime" → "DateTime", "Quantity" → "Quantity".

    https://hl7.org/fhir/R4/formats.html#choice
    """
    return fhir_type[:1].upper() + fhir_type[1:]


def type_matches(actual: str | None, wanted: str) -> bool:
    """Whether an item of FHIR type `actual` is a `wanted` (exactly, or a specialisation of it)."""
    while actual is not None:
        if actual == wanted:
            return True
        actual = _PARENT_TYPE.get(actual)
    return False


_BOOLEAN = _Static("boolean", ("boolean",))


class _Compiler:
    def __init__(self, resource_type: str, lookup: ElementLookup) -> None:
        self.resource_type = resource_type
        self.lookup = lookup

    def compile(self, node: Node, static: _Static) -> _Compiled:
        if isinstance(node, Ident):
            return self._ident(node.name, static)
        if isinstance(node, Dot):
            return self._dot(node, static)
        if isinstance(node, Call):
            return self._call(node, _Compiled(_identity, static, None, (), static.is_root))
        if isinstance(node, Union):
            return self._union(node, static)
        if isinstance(node, TypeOp):
            operand = self.compile(node.operand, static)
            return (
                self._cast(operand, node.type_name) if node.op == "as" else self._is(operand, node.type_name)
            )
        if isinstance(node, Compare):
            return self._compare(node, static)
        if isinstance(node, And):
            return self._and(node, static)
        if isinstance(node, Literal):
            item = (node.value, node.type_name)
            return _Compiled(lambda coll: [item], _Static(node.type_name, (node.type_name,)), None)
        raise UnsupportedExpression(f"unsupported node {node!r}")

    def _ident(self, name: str, static: _Static) -> _Compiled:
        if static.is_root and (name == self.resource_type or name in _RESOURCE_BASES):
            # The leading type name: CompiledExpression.__call__ has checked the resource's type.
            return _Compiled(_identity, _Static(self.resource_type, (self.resource_type,)), None, (), True)
        if static.is_root and name[:1].isupper():
            # Another resource type's expression: never matches this resource.
            return _Compiled(_nothing, _Static(None, None), frozenset())
        return self._member(name, static)

    def _member(self, name: str, static: _Static) -> _Compiled:
        path = f"{static.context}.{name}" if static.context else None
        found = self.lookup(path) if path is not None else None
        types = tuple(found) if found else None
        if path is None or types is None:
            return _navigation((((name, None),),), _Static(None, None), static.is_root, frozenset({name}))
        if len(types) == 1:
            fhir_type = types[0]
            tag = "BackboneElement" if fhir_type.startswith("#") else fhir_type
            out = _Static(_child_context(path, fhir_type), (tag,))
            return _navigation((((name, tag),),), out, static.is_root, frozenset({name}))
        step = tuple((name + json_suffix(t), t) for t in types)
        return _navigation((step,), _Static(None, types), static.is_root, frozenset(k for k, _ in step))

    def _dot(self, node: Dot, static: _Static) -> _Compiled:
        left = self.compile(node.left, static)
        if isinstance(node.right, Call):
            return self._call(node.right, left)
        if left.static.context is None and left.static.types is not None and len(left.static.types) > 1:
            raise UnsupportedExpression(f"navigating into a choice without a cast: .{node.right.name}")
        right = self.compile(node.right, left.static)
        if left.steps is not None and right.steps is not None:
            return _navigation(left.steps + right.steps, right.static, left.rooted, left.root_keys)
        return _Compiled(_chain(left.fn, right.fn), right.static, left.root_keys)

    def _call(self, call: Call, base: _Compiled) -> _Compiled:
        if call.name not in _FUNCTIONS:
            raise UnsupportedExpression(f"function {call.name}() is not supported")
        if call.name in ("as", "ofType"):
            if len(call.args) != 1 or not isinstance(call.args[0], Ident):
                raise UnsupportedExpression(f"{call.name}() takes one type name")
            return self._cast(base, call.args[0].name)
        if call.name == "where":
            if len(call.args) != 1:
                raise UnsupportedExpression("where() takes one criterion")
            return _Compiled(_chain(base.fn, self._where(call.args[0], base)), base.static, base.root_keys)
        if call.args:
            raise UnsupportedExpression(f"{call.name}() with arguments is not supported")
        if call.name == "exists":
            fn = base.fn
            return _Compiled(lambda coll: [(bool(fn(coll)), "boolean")], _BOOLEAN, None)
        return _Compiled(_chain(base.fn, _resolve), _Static(None, None), base.root_keys)

    def _where(self, criterion: Node, base: _Compiled) -> Evaluate:
        """The filter of `where(criterion)`, in one step for the usual criteria of search parameters:
        `resolve() is T` and `path = 'literal'`."""
        target = _resolved_type(criterion)
        if target is not None:
            return _references_to(target)
        if isinstance(criterion, Compare) and criterion.op == "=" and isinstance(criterion.right, Literal):
            return _where_equal(self.compile(criterion.left, base.static).fn, criterion.right.value)
        return _where(self.compile(criterion, base.static).fn)

    def _union(self, node: Union, static: _Static) -> _Compiled:
        left, right = self.compile(node.left, static), self.compile(node.right, static)
        lf, rf = left.fn, right.fn
        keys = None if left.root_keys is None or right.root_keys is None else left.root_keys | right.root_keys
        types = None
        if left.static.types is not None and right.static.types is not None:
            types = tuple(dict.fromkeys(left.static.types + right.static.types))
        context = left.static.context if left.static.context == right.static.context else None
        return _Compiled(lambda coll: lf(coll) + rf(coll), _Static(context, types), keys)

    def _cast(self, operand: _Compiled, type_name: str) -> _Compiled:
        static = _Static(type_name, (type_name,))
        if operand.steps:
            # Keep only the keys that hold that type: `(Observation.value as Quantity)` reads valueQuantity.
            last = tuple(alt for alt in operand.steps[-1] if type_matches(alt[1], type_name))
            if not last:
                return _Compiled(_nothing, static, frozenset())
            return _navigation(operand.steps[:-1] + (last,), static, operand.rooted, operand.root_keys)
        fn = operand.fn

        def cast(coll: Collection) -> Collection:
            return [item for item in fn(coll) if type_matches(item[1], type_name)]

        return _Compiled(cast, static, operand.root_keys)

    def _is(self, operand: _Compiled, type_name: str) -> _Compiled:
        fn = operand.fn

        def is_type(coll: Collection) -> Collection:
            result = fn(coll)
            if len(result) != 1:
                return []
            return [(type_matches(result[0][1], type_name), "boolean")]

        return _Compiled(is_type, _BOOLEAN, None)

    def _compare(self, node: Compare, static: _Static) -> _Compiled:
        lf, rf = self.compile(node.left, static).fn, self.compile(node.right, static).fn
        negate = node.op == "!="

        def compare(coll: Collection) -> Collection:
            left, right = lf(coll), rf(coll)
            if not left or not right:
                return []
            equal = len(left) == len(right) and all(_equal(a[0], b[0]) for a, b in zip(left, right))
            return [(equal != negate, "boolean")]

        return _Compiled(compare, _BOOLEAN, None)

    def _and(self, node: And, static: _Static) -> _Compiled:
        lf, rf = self.compile(node.left, static).fn, self.compile(node.right, static).fn

        def both(coll: Collection) -> Collection:
            left, right = _truth(lf(coll)), _truth(rf(coll))
            if left is False or right is False:
                return [(False, "boolean")]
            if left is True and right is True:
                return [(True, "boolean")]
            return []

        return _Compiled(both, _BOOLEAN, None)


def _child_context(path: str, fhir_type: str) -> str:
    """Where the children of an element are looked up: its own path for a backbone element, the
    referenced path for a content reference, its datatype otherwise ("HumanName" → "HumanName.family")."""
    if fhir_type in ("BackboneElement", "Element"):
        return path
    if fhir_type.startswith("#"):
        return fhir_type[1:]
    return fhir_type


def _identity(coll: Collection) -> Collection:
    return coll


def _nothing(coll: Collection) -> Collection:
    return []


def _chain(first: Evaluate, then: Evaluate) -> Evaluate:
    """`then` after `first`, for functions that map an empty collection to an empty one."""

    def chained(coll: Collection) -> Collection:
        found = first(coll)
        return then(found) if found else found

    return chained


def _walker(steps: tuple[Step, ...]) -> Evaluate:
    """One closure for a run of member accesses, stopping as soon as nothing is left."""
    fns = tuple(
        _navigate(*alternatives[0]) if len(alternatives) == 1 else _navigate_choice(alternatives)
        for alternatives in steps
    )
    if not fns:
        return _identity
    if len(fns) == 1:
        return fns[0]

    def walk(coll: Collection) -> Collection:
        for fn in fns:
            coll = fn(coll)
            if not coll:
                break
        return coll

    return walk


def _navigate(key: str, tag: str | None) -> Evaluate:
    """Member access: each dict's `key`, lists flattened, JSON nulls (primitive-extension padding) dropped."""

    def navigate(coll: Collection) -> Collection:
        out: Collection = []
        for node, _ in coll:
            if type(node) is not dict:
                continue
            value = node.get(key)
            if value is None:
                continue
            if type(value) is list:
                out.extend([(v, tag) for v in value if v is not None])
            else:
                out.append((value, tag))
        return out

    return navigate


def _navigate_choice(alternatives: Step) -> Evaluate:
    """Member access to a choice element: whichever of `valueQuantity`, `valueString`, … is present."""

    def navigate(coll: Collection) -> Collection:
        out: Collection = []
        for node, _ in coll:
            if type(node) is not dict:
                continue
            for key, tag in alternatives:
                value = node.get(key)
                if value is None:
                    continue
                if type(value) is list:
                    out.extend([(v, tag) for v in value if v is not None])
                else:
                    out.append((value, tag))
        return out

    return navigate


def _where(criterion: Evaluate) -> Evaluate:
    def where(coll: Collection) -> Collection:
        return [item for item in coll if _truth(criterion([item])) is True]

    return where


def _resolved_type(criterion: Node) -> str | None:
    """T when a where() criterion is `resolve() is T`, as reference parameters' criteria usually are."""
    if isinstance(criterion, TypeOp) and criterion.op == "is" and criterion.operand == Call("resolve", ()):
        return criterion.type_name
    return None


def _references_to(type_name: str) -> Evaluate:
    """`where(resolve() is T)` in one step: the references whose target type is a T."""

    def where(coll: Collection) -> Collection:
        return [item for item in coll if type_matches(reference_type(item[0]), type_name)]

    return where


def _where_equal(member: Evaluate, value: Any) -> Evaluate:
    """`where(path = literal)` in one step: the items whose `path` is that one value (as _compare)."""

    def where(coll: Collection) -> Collection:
        out: Collection = []
        for item in coll:
            found = member([item])
            if len(found) == 1 and _equal(found[0][0], value):
                out.append(item)
        return out

    return where


class Resolved:
    """What `resolve()` yields: only the target's type, read from the reference (nothing is fetched)."""

    __slots__ = ("reference",)

    def __init__(self, reference: Any) -> None:
        self.reference = reference


def _resolve(coll: Collection) -> Collection:
    out: Collection = []
    for node, _ in coll:
        target_type = reference_type(node)
        if target_type is not None:
            out.append((Resolved(node), target_type))
    return out


def _truth(coll: Collection) -> bool | None:
    """FHIRPath singleton evaluation to a boolean: empty → None (unknown)."""
    if not coll:
        return None
    if len(coll) == 1 and type(coll[0][0]) is bool:
        return coll[0][0]
    return True


def _equal(a: Any, b: Any) -> bool:
    if type(a) is bool or type(b) is bool:
        return type(a) is type(b) and a == b
    return a == b
