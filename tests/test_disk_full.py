"""A checkpoint write that fails for lack of space names the file being
written (``[Errno 28] No space left on device`` named nothing)."""
import errno
import os
import resource
import signal

import pytest
import torch
from mmengine.runner.checkpoint import save_checkpoint


@pytest.mark.parametrize('failure', ['write', 'fsync'])
def test_failed_checkpoint_write_names_the_file(tmp_path, monkeypatch,
                                                failure):
    """``write``: a real short write (the kernel's ``EFBIG`` under an
    ``RLIMIT_FSIZE`` of 64 KiB, as ``ENOSPC`` on a full disk); ``fsync``:
    ``ENOSPC`` reported at the flush, as file systems with delayed
    allocation do. Nothing is left behind."""
    path = tmp_path / 'iter_7.pth'
    state = {'weight': torch.zeros(100_000)}
    if failure == 'fsync':
        def no_space(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        monkeypatch.setattr(os, 'fsync', no_space)
        code = errno.ENOSPC
    else:
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
        code = errno.EFBIG
    try:
        with pytest.raises(OSError) as info:
            # DurableCheckpointHook's backend (m3i_mm.engine.checkpoint)
            save_checkpoint(state, str(path),
                            backend_args=dict(backend='durable_local'))
    finally:
        if failure == 'write':
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
            signal.signal(signal.SIGXFSZ, old)
    assert info.value.errno == code
    assert str(path) in str(info.value), str(info.value)
    assert os.listdir(tmp_path) == []
