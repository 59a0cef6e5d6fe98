"""Install m3i_mm with its configs and tools as package data (for ``mim``).

A regular install copies ``configs/`` and ``tools/`` into ``m3i_mm/.mim``, so
``mim train m3i_mm CONFIG`` finds ``m3i_mm/.mim/tools/train.py`` and the
configs; with ``pip install -e .`` mim uses the repository itself.
The DCNv3 CUDA extension is built only where CUDA is available or
``M3I_FORCE_CUDA=1`` (see ``m3i_mm/ops/dcnv3/build.py``).
Requirements: ``requirements/runtime.txt`` (names shared by the OneDL and the
upstream OpenMMLab line) plus an extra for the OpenMMLab packages,
``m3i_mm[onedl]`` or ``m3i_mm[upstream]``.
"""
import importlib.util
import os
import os.path as osp
import shutil
import sys

from setuptools import find_packages, setup

ROOT = osp.dirname(osp.abspath(__file__))
MIM_FILES = ('configs', 'tools')


def read_version() -> str:
    scope = {}
    with open(osp.join(ROOT, 'm3i_mm', 'version.py')) as f:
        exec(f.read(), scope)
    return scope['__version__']


def parse_requirements(name: str) -> list:
    """Requirement lines of ``requirements/<name>.txt`` (no comments)."""
    with open(osp.join(ROOT, 'requirements', f'{name}.txt')) as f:
        lines = (line.split('#', 1)[0].strip() for line in f)
        return [line for line in lines if line]


def add_mim_extension() -> None:
    """Copy configs/ and tools/ into m3i_mm/.mim for a regular install.

    An editable install needs no copy: mim then resolves the package to the
    repository root and finds ``tools/train.py`` and ``configs/`` there, and
    a copy would make every config name ambiguous, so it is removed.
    """
    editable = any(arg in ('develop', 'editable_wheel') for arg in sys.argv)
    mim_path = osp.join(ROOT, 'm3i_mm', '.mim')
    if osp.islink(mim_path) or osp.isfile(mim_path):
        os.remove(mim_path)
    elif osp.isdir(mim_path):
        shutil.rmtree(mim_path)
    if editable:
        return
    for name in MIM_FILES:
        shutil.copytree(
            osp.join(ROOT, name),
            osp.join(mim_path, name),
            ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))


def cuda_extensions():
    """DCNv3 CUDA extension (empty list on machines without CUDA)."""
    path = osp.join(ROOT, 'm3i_mm', 'ops', 'dcnv3', 'build.py')
    if not osp.exists(path):
        return [], {}
    spec = importlib.util.spec_from_file_location('_m3i_dcnv3_build', path)
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    extensions = build.get_dcnv3_extensions()
    if not extensions:
        return [], {}
    return extensions, build.get_cmdclass()


if __name__ == '__main__':
    add_mim_extension()
    ext_modules, cmdclass = cuda_extensions()
    setup(
        name='m3i_mm',
        version=read_version(),
        description='M3I pre-training (all-in-one pre-training via maximizing '
        'multi-modal mutual information) as an OpenMMLab plugin',
        long_description=open(osp.join(ROOT, 'README.md')).read(),
        long_description_content_type='text/markdown',
        python_requires='>=3.9',
        packages=find_packages(include=['m3i_mm', 'm3i_mm.*']),
        include_package_data=True,
        package_data={'m3i_mm': ['.mim/configs/**/*.py', '.mim/tools/*',
                                 '.mim/tools/**/*', 'ops/**/src/*']},
        # Names shared by the OneDL and the upstream OpenMMLab line; the
        # OpenMMLab packages come with an extra: m3i_mm[onedl] (= mim's
        # [mminstall]) or m3i_mm[upstream].
        install_requires=parse_requirements('runtime'),
        extras_require={
            'onedl': parse_requirements('mminstall'),
            'mminstall': parse_requirements('mminstall'),
            'upstream': parse_requirements('mminstall_upstream'),
            'demo': parse_requirements('demo'),
            'tests': parse_requirements('tests'),
        },
        ext_modules=ext_modules,
        cmdclass=cmdclass,
        zip_safe=False,
        license='Apache License 2.0')
