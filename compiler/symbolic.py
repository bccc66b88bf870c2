"""Symbolic sizes: integer expressions over size symbols such as `H` and `W`.

A dim is either a Python `int` or an `Expr`. Expressions support `+ - * //` with ints and
with each other, so the shape rules in `shapes.py` run unchanged on both. Every expression is
kept in a normal form, a linear combination of atoms plus a constant:

    atoms: Sym("H"), Floor(lin, m) = floor(lin / m), Prod(lin, lin, ...), CeilPool(...)

`Floor` normalises as it is built: whole multiples move outside (floor((2H + 1)/2) = H),
the constant is brought into (-m, 0], and nested floors merge
(floor((floor(x/a) + c)/b) = floor((x + a c)/(a b)) for integer x). So two branches that
compute the same size the same way compare equal structurally, and stacked stride-2 layers
print as one readable formula: a ResNet's last stage is `floor((H - 1)/32) + 1` high.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import gcd


class Expr:
    """Linear combination of atoms with integer coefficients, plus an integer constant."""

    __slots__ = ("terms", "const", "_hash")

    def __init__(self, terms: tuple = (), const: int = 0):
        self.terms = terms  # tuple of (atom, coeff), sorted by the atom's key, coeff != 0
        self.const = const
        self._hash = None

    # ---- construction ----
    @staticmethod
    def make(terms: dict, const: int) -> "Expr | int":
        items = tuple(sorted(((a, c) for a, c in terms.items() if c != 0), key=lambda t: t[0].key))
        if not items:
            return const
        return Expr(items, const)

    def _as_dict(self) -> dict:
        return dict(self.terms)

    # ---- arithmetic ----
    def __add__(self, other):
        if isinstance(other, int):
            return Expr(self.terms, self.const + other) if other else self
        if isinstance(other, Expr):
            terms = self._as_dict()
            for atom, coeff in other.terms:
                terms[atom] = terms.get(atom, 0) + coeff
            return Expr.make(terms, self.const + other.const)
        return NotImplemented

    __radd__ = __add__

    def __neg__(self):
        return Expr(tuple((a, -c) for a, c in self.terms), -self.const)

    def __sub__(self, other):
        return self + (-other)

    def __rsub__(self, other):
        return (-self) + other

    def __mul__(self, other):
        if isinstance(other, int):
            if other == 0:
                return 0
            return Expr(tuple((a, c * other) for a, c in self.terms), self.const * other)
        if isinstance(other, Expr):
            return _product(self, other)
        return NotImplemented

    __rmul__ = __mul__

    def __floordiv__(self, other):
        if isinstance(other, int):
            if other <= 0:
                raise ZeroDivisionError("symbolic sizes divide by positive integers only")
            return floor_div(self, other)
        return NotImplemented

    # ---- comparison and hashing: structural ----
    def __eq__(self, other):
        if isinstance(other, Expr):
            return self.terms == other.terms and self.const == other.const
        return False

    def __hash__(self):
        if self._hash is None:
            self._hash = hash((self.terms, self.const))
        return self._hash

    @property
    def key(self) -> str:
        return str(self)

    # ---- evaluation ----
    def evaluate(self, env: dict) -> int:
        total = self.const
        for atom, coeff in self.terms:
            total += coeff * atom.evaluate(env)
        return total

    def symbols(self) -> set:
        out: set = set()
        for atom, _ in self.terms:
            out |= atom.symbols()
        return out

    def divisors(self) -> list[int]:
        """Every divisor in a floor inside this expression (for periodicity)."""
        out: list[int] = []
        for atom, _ in self.terms:
            out += atom.divisors()
        return out

    # ---- printing ----
    def __str__(self) -> str:
        parts: list[str] = []
        for atom, coeff in self.terms:
            text = str(atom)
            mag = abs(coeff)
            term = text if mag == 1 else f"{mag}*{text}"
            if not parts:
                parts.append(term if coeff > 0 else f"-{term}")
            else:
                parts.append(f"+ {term}" if coeff > 0 else f"- {term}")
        if self.const:
            parts.append(f"+ {self.const}" if self.const > 0 else f"- {-self.const}")
        return " ".join(parts)

    __repr__ = __str__


@dataclass(frozen=True)
class Sym:
    name: str

    @property
    def key(self) -> str:
        return "0" + self.name

    def evaluate(self, env):
        return env[self.name]

    def symbols(self):
        return {self.name}

    def divisors(self):
        return []

    def __str__(self):
        return self.name


@dataclass(frozen=True)
class Floor:
    inner: Expr
    divisor: int

    @property
    def key(self) -> str:
        return "1" + str(self)

    def evaluate(self, env):
        return self.inner.evaluate(env) // self.divisor

    def symbols(self):
        return self.inner.symbols()

    def divisors(self):
        return [self.divisor] + self.inner.divisors()

    def __str__(self):
        inner = self.inner
        bare = isinstance(inner, Expr) and inner.const == 0 and len(inner.terms) == 1 and (
            inner.terms[0][1] == 1 and not isinstance(inner.terms[0][0], Prod))
        text = str(inner) if bare else f"({inner})"
        return f"floor({text}/{self.divisor})"


@dataclass(frozen=True)
class Prod:
    factors: tuple  # of Expr, sorted by key

    @property
    def key(self) -> str:
        return "2" + str(self)

    def evaluate(self, env):
        out = 1
        for f in self.factors:
            out *= f.evaluate(env)
        return out

    def symbols(self):
        out: set = set()
        for f in self.factors:
            out |= f.symbols()
        return out

    def divisors(self):
        out: list[int] = []
        for f in self.factors:
            out += f.divisors()
        return out

    def __str__(self):
        parts = []
        i = 0
        while i < len(self.factors):
            j = i
            while j < len(self.factors) and self.factors[j] == self.factors[i]:
                j += 1
            text = _factor_text(self.factors[i])
            parts.append(text if j - i == 1 else f"{text}^{j - i}")
            i = j
        return "*".join(parts)


@dataclass(frozen=True)
class CeilPool:
    """PyTorch's ceil-mode pooling size where a last window may start in the right padding:
    ceil((n + 2p - k)/s) + 1, less one when that last window would start past n + p."""

    n: Expr
    k: int
    s: int
    p: int

    @property
    def key(self) -> str:
        return "3" + str(self)

    def evaluate(self, env):
        n = self.n.evaluate(env)
        out = (n + 2 * self.p - self.k + self.s - 1) // self.s + 1
        if (out - 1) * self.s >= n + self.p:
            out -= 1
        return out

    def symbols(self):
        return self.n.symbols()

    def divisors(self):
        return [self.s] + self.n.divisors()

    def __str__(self):
        return f"ceil_pool({self.n}, k={self.k}, s={self.s}, p={self.p})"


def _factor_text(e: Expr) -> str:
    text = str(e)
    return text if len(e.terms) == 1 and e.const == 0 and e.terms[0][1] == 1 else f"({text})"


def sym(name: str) -> Expr:
    return Expr(((Sym(name), 1),), 0)


def atom_expr(atom) -> Expr:
    return Expr(((atom, 1),), 0)


def floor_div(e: "Expr | int", m: int) -> "Expr | int":
    """floor(e / m) in normal form."""
    if isinstance(e, int):
        return e // m
    if m == 1:
        return e
    whole: dict = {}
    rest: dict = {}
    for atom, coeff in e.terms:
        q, r = divmod(coeff, m)
        if q:
            whole[atom] = q
        if r:
            rest[atom] = r
    # constant into (-m, 0]
    q0 = -((-e.const) // m)
    r0 = e.const - q0 * m
    outside = Expr.make(whole, q0)
    if not rest:
        return outside + (r0 // m)
    # a common factor of the remaining coefficients, the constant and m cancels
    g = m
    for c in rest.values():
        g = gcd(g, c)
    g = gcd(g, r0) if r0 else g
    if g > 1:
        rest = {a: c // g for a, c in rest.items()}
        r0 //= g
        m //= g
    if len(rest) == 1:
        (atom, coeff), = rest.items()
        if coeff == 1 and isinstance(atom, Floor):
            # floor((floor(x/a) + r0)/m) = floor((x + a*r0)/(a*m))
            inner = atom.inner + atom.divisor * r0
            return outside + floor_div(inner, atom.divisor * m)
    if m == 1:
        return outside + Expr.make(rest, r0)
    return outside + atom_expr(Floor(Expr.make(rest, r0) if rest else r0, m))


def _content(e: Expr) -> tuple[int, Expr]:
    """Split off the integer content: 64*x + 64 -> (64, x + 1)."""
    g = abs(e.const)
    for _, c in e.terms:
        g = gcd(g, c)
    if e.terms[0][1] < 0:
        g = -g
    if g in (0, 1):
        return 1, e
    return g, Expr(tuple((a, c // g) for a, c in e.terms), e.const // g)


def _factors(e: Expr) -> list:
    if len(e.terms) == 1 and e.const == 0 and e.terms[0][1] == 1 and isinstance(
        e.terms[0][0], Prod
    ):
        return list(e.terms[0][0].factors)
    return [e]


def _product(a: Expr, b: Expr) -> "Expr | int":
    if not a.terms:
        return b * a.const
    if not b.terms:
        return a * b.const
    ca, a = _content(a)
    cb, b = _content(b)
    flat = _factors(a) + _factors(b)
    return atom_expr(Prod(tuple(sorted(flat, key=str)))) * (ca * cb)


# ---- helpers for dims that may be int or Expr ----

def is_concrete(d) -> bool:
    return isinstance(d, int)


def evaluate(d, env: dict) -> int:
    return d if isinstance(d, int) else d.evaluate(env)


def shape_text(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def lcm_all(values, cap: int = 1 << 16) -> int:
    out = 1
    for v in values:
        out = out * v // gcd(out, v)
        if out > cap:
            return cap
    return out


# ---- the set of valid sizes -------------------------------------------------------------

@dataclass
class Condition:
    """A requirement on symbolic sizes: `lhs >= 1` (kind "ge1") or `lhs == rhs` ("eq")."""

    kind: str
    lhs: object
    rhs: object
    origin: object  # whatever the checker needs to report a violation

    def symbols(self) -> set:
        out = set()
        for side in (self.lhs, self.rhs):
            if isinstance(side, Expr):
                out |= side.symbols()
        return out

    def holds(self, env: dict) -> bool:
        lhs = evaluate(self.lhs, env)
        if self.kind == "ge1":
            return lhs >= 1
        return lhs == evaluate(self.rhs, env)

    def divisors(self) -> list[int]:
        out: list[int] = []
        for side in (self.lhs, self.rhs):
            if isinstance(side, Expr):
                out += side.divisors()
        return out


@dataclass
class ValidSet:
    """The sizes of one symbol for which every condition holds, for sizes up to `limit`."""

    symbol: str
    start: int | None  # the smallest valid size, None if none was found
    modulus: int = 1
    residues: tuple = (0,)
    explicit: tuple | None = None  # a finite list, when the valid sizes are not periodic

    def describe(self) -> str:
        s = self.symbol
        if self.start is None:
            return f"no value of {s} is valid"
        if self.explicit is not None:
            return f"{s} in {{{', '.join(str(v) for v in self.explicit)}}}"
        text = f"{s} >= {self.start}"
        if self.modulus > 1:
            if len(self.residues) == 1:
                text += f" and {s} = {self.residues[0]} mod {self.modulus}"
            else:
                listed = ", ".join(str(r) for r in self.residues)
                text += f" and {s} mod {self.modulus} in {{{listed}}}"
        return text

    def contains(self, value: int) -> bool:
        if self.start is None:
            return False
        if self.explicit is not None:
            return value in self.explicit
        return value >= self.start and value % self.modulus in self.residues


def solve(symbol: str, conditions: list[Condition], others: dict) -> ValidSet:
    """Find the sizes of `symbol` that satisfy `conditions` (other symbols fixed by `others`).

    Every shape rule is monotone in its input size, so the `>= 1` conditions hold from some
    threshold on; an equality between floors of the size is periodic in it with a period
    dividing the lcm of the divisors involved. Scan from the threshold over two periods,
    then state the residues that repeat.
    """
    lowers = [c for c in conditions if c.kind == "ge1"]
    eqs = [c for c in conditions if c.kind == "eq"]

    def env(v):
        e = dict(others)
        e[symbol] = v
        return e

    def lower_ok(v):
        return all(c.holds(env(v)) for c in lowers)

    # exponential then binary search for the threshold of the monotone conditions
    hi = 1
    while not lower_ok(hi):
        hi *= 2
        if hi > 1 << 40:
            return ValidSet(symbol, None)
    lo = hi // 2 if hi > 1 else 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if lower_ok(mid):
            hi = mid
        else:
            lo = mid
    start = hi
    period = lcm_all(d for c in conditions for d in c.divisors())
    window = [v for v in range(start, start + 2 * period) if all(c.holds(env(v)) for c in eqs)]
    if not window:
        return ValidSet(symbol, None)
    first = [v % period for v in window if v < start + period]
    second = [v % period for v in window if v >= start + period]
    if sorted(first) != sorted(second):
        return ValidSet(symbol, window[0], explicit=tuple(window))
    residues = sorted(set(first))
    modulus = period
    # the smallest modulus that describes the same residue set
    for m in range(1, period + 1):
        if period % m:
            continue
        reduced = sorted({r % m for r in residues})
        if len(reduced) * (period // m) == len(residues):
            modulus = m
            residues = reduced
            break
    if len(residues) == modulus:
        modulus, residues = 1, [0]
    return ValidSet(symbol, window[0], modulus, tuple(residues))
