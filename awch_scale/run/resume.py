"""Whether a store can be resumed by a recipe: the recipes compared parsed (values, not
text), the error ``analyze`` refuses a store with, and what ``validate`` says of it."""

from __future__ import annotations

from pathlib import Path

from awch_scale.errors import AwchError, RecipeError
from awch_scale.results.lock import StoreLock
from awch_scale.results.queries import completion
from awch_scale.results.store import ResultStore
from awch_scale.run.plan import store_path_problem
from awch_scale.run.recipe import parse_recipe


def recipe_differences(stored: str, text: str, limit: int = 5) -> list[str]:
    """What differs between the recipe a store was made by (``stored``, its YAML text) and
    ``text``, compared parsed: every value, defaults filled in (:meth:`Recipe.model_dump`),
    so comments, key order, quoting and flow or block style do not count, while any value
    does. Returns up to ``limit`` lines ``key: stored -> now`` (dotted keys); empty when
    they are the same recipe.

    A stored text that this version no longer parses is one line saying so (its store
    cannot be resumed).
    """
    try:
        old = parse_recipe(stored, "of the store").model_dump(mode="json")
    except RecipeError as exc:
        return [f"the store's recipe is not valid for this version ({str(exc)[:200]})"]
    new = parse_recipe(text).model_dump(mode="json")
    lines: list[str] = []
    _differ(old, new, "", lines)
    return lines[:limit] + ([f"... and {len(lines) - limit} more"] if len(lines) > limit
                            else [])


def _differ(old, new, key: str, out: list[str]) -> None:
    if isinstance(old, dict) and isinstance(new, dict):
        for k in list(old) + [k for k in new if k not in old]:
            _differ(old.get(k), new.get(k), f"{key}.{k}" if key else k, out)
    elif old != new:
        out.append(f"{key}: {old!r} -> {new!r}")


def different_recipe_error(path: Path, stored: str | None, text: str) -> AwchError | None:
    """The error ``analyze`` refuses the store at ``path`` with when it was made by a
    recipe with other values (:func:`recipe_differences`); None when it is the same."""
    differ = recipe_differences(stored or "", text)
    if not differ:
        return None
    return AwchError(f"store {path} was made by a different recipe ({'; '.join(differ)}); to "
                     "resume, run the same recipe (comments and formatting may differ, "
                     "values may not), or set 'store' to a new path (or delete the old store)")


def resume_status(path: Path, text: str) -> str:
    """One sentence for ``validate``: whether ``analyze`` with the recipe ``text`` would
    create the store at ``path``, resume it (how many analyses it holds), find nothing
    left to do, or refuse it (and why)."""
    problem = store_path_problem(path)
    if problem is not None:
        return f"analyze refuses the store path: {problem}"
    rs = ResultStore(path)
    if not rs.exists():
        return f"store {path} does not exist yet: analyze creates it"
    try:
        ResultStore.for_reading(path, check_arrays=False)
    except AwchError as exc:
        return f"analyze cannot resume it: {exc}"
    error = different_recipe_error(path, rs.group_attrs().get("recipe"), text)
    if error is not None:
        return f"analyze refuses it: {error}"
    lock = StoreLock(path)
    owner = lock.live_owner()
    if owner is not None:
        return f"analyze cannot resume it now: {lock.held_message(owner)}"
    try:
        n_done, total, finished = completion(rs.open())
    except Exception as exc:  # noqa: BLE001  (a damaged array: verify says which)
        return (f"store {path} was made by this recipe but cannot be read "
                f"({type(exc).__name__}); run 'awch-scale verify {path}'")
    if finished:
        return (f"store {path} was made by this recipe and holds all {n_done} of {total} "
                "analyses (diverged runs excepted): analyze has nothing left to do")
    return (f"store {path} was made by this recipe and holds {n_done} of {total} analyses: "
            "analyze resumes it")
