"""List the upstream attributes that ``import m3i_mm`` replaces or adds.

    python tests/upstream_snapshot.py MODULES_JSON

Imports the given upstream modules (those ``import m3i_mm`` loads from
mmengine, mmcv, mmpretrain, mmdet, mmseg, torch.utils.data and numpy),
records every module attribute and every attribute of the classes they
define, imports m3i_mm and prints, as JSON, the ``module.attr`` /
``module.Class.attr`` names whose object changed, appeared or disappeared
(submodules bound as attributes are not counted: importing a module does
that).
"""
import importlib
import inspect
import json
import sys
import types

PACKAGES = ('mmengine', 'mmcv', 'mmpretrain', 'mmdet', 'mmseg',
            'torch.utils.data', 'numpy')


def upstream_modules():
    return sorted(name for name in sys.modules
                  if any(name == package or name.startswith(package + '.')
                         for package in PACKAGES))


def snapshot(names):
    seen = {}
    for name in names:
        module = sys.modules.get(name)
        if module is None:
            continue
        for attr, value in list(vars(module).items()):
            if isinstance(value, types.ModuleType):
                continue
            seen[f'{name}.{attr}'] = id(value)
            if inspect.isclass(value) and value.__module__ == name:
                for key, member in list(vars(value).items()):
                    seen[f'{name}.{attr}.{key}'] = id(member)
    return seen


def main(names):
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # optional dependencies of some modules
            pass
    before = snapshot(names)
    import m3i_mm  # noqa: F401
    after = snapshot(names)
    changed = sorted(k for k in set(before) | set(after)
                     if before.get(k) != after.get(k))
    print(json.dumps(changed))


if __name__ == '__main__':
    if sys.argv[1] == '--list':
        import m3i_mm  # noqa: F401,F811
        print(json.dumps(upstream_modules()))
    else:
        main(json.loads(sys.argv[1]))
