"""One root error per deployable: every exception class the device runtime or the coordinator
defines derives from `EdgeError` or `CoordinatorError` (issue 13)."""

import importlib
import inspect
import pkgutil

import pytest

import coordinator
import edge_runtime
from coordinator.errors import CoordinatorError
from edge_runtime.errors import EdgeError


def _modules(package):
    for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
        if info.name.endswith(("__main__", ".migrations")):
            continue
        mod = importlib.import_module(info.name)
        yield mod
        if info.ispkg:
            yield from _modules(mod)


def _own_exceptions(package):
    for mod in _modules(package):
        for _, cls in inspect.getmembers(mod, inspect.isclass):
            if issubclass(cls, BaseException) and cls.__module__ == mod.__name__:
                yield cls


@pytest.mark.parametrize(("package", "root"), [(edge_runtime, EdgeError), (coordinator, CoordinatorError)])
def test_every_exception_derives_from_the_deployables_root(package, root):
    found = list(_own_exceptions(package))
    assert len(found) > 2
    assert [c.__qualname__ for c in found if not issubclass(c, root)] == []
