"""Build helpers of the DCNv3 CUDA extension ``m3i_mm._ext_dcnv3``.

``setup.py`` loads this file by path (it must not import the ``m3i_mm``
package, whose dependencies may not be installed yet), so it only uses the
standard library and, lazily, ``torch.utils.cpp_extension``::

    spec = importlib.util.spec_from_file_location(
        'dcnv3_build', 'm3i_mm/ops/dcnv3/build.py')
    dcnv3_build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dcnv3_build)
    ext_modules = dcnv3_build.get_dcnv3_extensions()
    cmdclass = dcnv3_build.get_cmdclass() if ext_modules else {}

The extension is built only where CUDA is usable
(``torch.cuda.is_available()``) or when forced with ``M3I_FORCE_CUDA=1``
(e.g. a GPU-less build machine with nvcc; set ``TORCH_CUDA_ARCH_LIST``
there). Without it m3i_mm runs the
pure-PyTorch DCNv3 everywhere.
"""
import glob
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from typing import List, Optional, Sequence

EXT_NAME = 'm3i_mm._ext_dcnv3'
FORCE_ENV = 'M3I_FORCE_CUDA'
_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(_HERE)))
SRC_DIR = os.path.join(_HERE, 'src')
CPP_SOURCES = ('dcnv3.cpp', )
CUDA_SOURCES = ('dcnv3_cuda.cu', )


def source_paths(relative: bool = True) -> List[str]:
    """Sources of the extension.

    Args:
        relative (bool): Relative to the project root (what setuptools
            wants, setup.py runs there) instead of absolute. Defaults to True.

    Returns:
        list[str]: The C++ binding and the CUDA kernels.
    """
    paths = [
        os.path.join(SRC_DIR, name) for name in CPP_SOURCES + CUDA_SOURCES
    ]
    if relative:
        paths = [os.path.relpath(path, _ROOT) for path in paths]
    return paths


def want_cuda_extension() -> bool:
    """Whether to build: ``M3I_FORCE_CUDA=1`` or a usable CUDA device."""
    if os.environ.get(FORCE_ENV, '0') == '1':
        return True
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pip_cuda_include_dirs() -> List[str]:
    """Header folders of the CUDA libraries pip installed beside torch.

    PyPI's CUDA builds of torch bring cuBLAS, cuSPARSE, ... as ``nvidia-*``
    wheels (``site-packages/nvidia/*/include``) whose headers torch's own
    headers include; a minimal CUDA toolkit (nvcc + cudart) lacks them.
    """
    import torch
    site = os.path.dirname(os.path.dirname(os.path.abspath(torch.__file__)))
    return sorted(glob.glob(os.path.join(site, 'nvidia', '*', 'include')))


def get_dcnv3_extensions() -> list:
    """The ``CUDAExtension`` list for ``setup(ext_modules=...)``.

    Returns:
        list: ``[CUDAExtension('m3i_mm._ext_dcnv3', ...)]`` when
        :func:`want_cuda_extension`, else ``[]``.

    Raises:
        CudaToolkitNotFound: See :func:`find_cuda_home`.
    """
    if not want_cuda_extension():
        return []
    use_cuda_home(find_cuda_home())
    from torch.utils.cpp_extension import CUDAExtension
    return [
        CUDAExtension(
            name=EXT_NAME,
            sources=source_paths(),
            include_dirs=pip_cuda_include_dirs(),
            extra_compile_args={
                'cxx': ['-O3', '-std=c++17'],
                'nvcc': ['-O3', '-std=c++17'],
            })
    ]


def use_cuda_home(home: str) -> None:
    """Make torch's extension builder use the toolkit ``home``.

    torch reads ``CUDA_HOME`` once, when ``torch.utils.cpp_extension`` is
    first imported; its documented door is the environment variable.

    Raises:
        CudaToolkitNotFound: ``torch.utils.cpp_extension`` was imported
            earlier with another toolkit.
    """
    os.environ['CUDA_HOME'] = home
    loaded = sys.modules.get('torch.utils.cpp_extension')
    chosen = getattr(loaded, 'CUDA_HOME', None)
    if loaded is not None and chosen and (os.path.realpath(chosen) !=
                                          os.path.realpath(home)):
        raise CudaToolkitNotFound(
            f'torch.utils.cpp_extension already uses CUDA_HOME={chosen}, '
            f'not the toolkit {home}; set CUDA_HOME={home} before building')


def get_cmdclass() -> dict:
    """``{'build_ext': BuildExtension}`` for ``setup(cmdclass=...)``."""
    from torch.utils.cpp_extension import BuildExtension
    return {'build_ext': BuildExtension}


class CudaToolkitNotFound(RuntimeError):
    """No usable CUDA toolkit (nvcc and the CUDA runtime library)."""


def _has_cudart(home: str) -> bool:
    patterns = ('lib64/libcudart.so*', 'lib/libcudart.so*',
                'targets/*/lib/libcudart.so*', 'lib/x64/cudart.lib')
    return any(glob.glob(os.path.join(home, p)) for p in patterns)


def _nvcc_top(nvcc: str) -> Optional[str]:
    """The toolkit folder nvcc itself uses (its ``TOP`` in ``-dryrun``):
    right also when ``nvcc`` on ``PATH`` is a wrapper script."""
    try:
        out = subprocess.run(
            [nvcc, '-dryrun', '-c', '-x', 'cu', os.devnull, '-o',
             os.devnull], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r'^#\$ TOP=(.+)$', out.stderr + out.stdout, re.M)
    return os.path.realpath(found.group(1).strip()) if found else None


def find_cuda_home(fallbacks: Sequence[str] = ('/usr/local/cuda', )) -> str:
    """The CUDA toolkit to build against, the way users have it.

    In order: ``$CUDA_HOME`` (or ``$CUDA_PATH``), which must hold
    ``bin/nvcc``; the folder of the ``nvcc`` on ``PATH``, through symlinks
    and wrapper scripts (nvcc's own ``TOP``); then ``fallbacks``. A
    candidate must also hold the CUDA runtime library (``libcudart``):
    torch guesses ``CUDA_HOME`` from ``nvcc``'s folder, which for
    ``/usr/local/bin/nvcc`` is ``/usr/local``, and the link then fails
    with ``cannot find -lcudart`` (issue 19).

    Returns:
        str: The toolkit folder.

    Raises:
        CudaToolkitNotFound: ``CUDA_HOME`` names a folder without
            ``bin/nvcc``, or no candidate has nvcc and libcudart; the
            message says which variable to set.
    """
    for var in ('CUDA_HOME', 'CUDA_PATH'):
        home = os.environ.get(var)
        if home:
            if not os.path.isfile(os.path.join(home, 'bin', 'nvcc')):
                raise CudaToolkitNotFound(
                    f'{var}={home} has no bin/nvcc; set {var} to the CUDA '
                    'toolkit folder (the one holding bin/nvcc and '
                    'lib64/libcudart.so)')
            return home
    candidates = []
    nvcc = shutil.which('nvcc')
    if nvcc:
        real = os.path.realpath(nvcc)
        candidates.append(os.path.dirname(os.path.dirname(real)))
        candidates.append(_nvcc_top(real))
    candidates += list(fallbacks)
    for home in filter(None, candidates):
        if (os.path.isfile(os.path.join(home, 'bin', 'nvcc'))
                and _has_cudart(home)):
            return home
    seen = ', '.join(filter(None, candidates)) or 'none'
    raise CudaToolkitNotFound(
        f'No CUDA toolkit with nvcc and libcudart found (looked at: {seen}; '
        f'nvcc on PATH: {nvcc}); set CUDA_HOME to the toolkit folder (the '
        'one holding bin/nvcc and lib64/libcudart.so)')


def find_nvcc() -> Optional[str]:
    """nvcc of :func:`find_cuda_home`, else None."""
    try:
        return os.path.join(find_cuda_home(), 'bin', 'nvcc')
    except CudaToolkitNotFound:
        return None


def nvcc_flags() -> List[str]:
    """nvcc flags torch's ``BuildExtension`` uses for extensions."""
    from torch.utils import cpp_extension
    return list(cpp_extension.COMMON_NVCC_FLAGS)


def nvcc_compile_command(source: str,
                         output: str,
                         arch: str = 'sm_80',
                         nvcc: Optional[str] = None) -> List[str]:
    """nvcc command compiling one source to an object file, as a build would.

    Used by the CI compile check (tests/test_dcnv3.py) so that a broken
    kernel is caught on machines without a GPU.

    Args:
        source (str): A ``.cu`` (or ``.cpp``) file.
        output (str): The object file to write.
        arch (str): GPU architecture. Defaults to ``'sm_80'``.
        nvcc (str, optional): nvcc executable; found by :func:`find_nvcc`.

    Returns:
        list[str]: The command line.
    """
    import torch
    from torch.utils.cpp_extension import include_paths
    nvcc = nvcc or find_nvcc()
    if nvcc is None:
        raise CudaToolkitNotFound('nvcc not found; set CUDA_HOME to the CUDA '
                                  'toolkit folder')
    includes = [path for path in include_paths() if os.path.isdir(path)]
    includes += pip_cuda_include_dirs()
    includes.append(sysconfig.get_paths()['include'])
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    return [
        nvcc, '-c', source, '-o', output, f'-arch={arch}', '-std=c++17', '-O3',
        '-Xcompiler', '-fPIC', f'-D_GLIBCXX_USE_CXX11_ABI={abi}',
        '-DTORCH_API_INCLUDE_EXTENSION_H', '-DTORCH_EXTENSION_NAME=_ext_dcnv3'
    ] + nvcc_flags() + [f'-I{path}' for path in includes]
