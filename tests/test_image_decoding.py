"""Both decode paths (``NamedLoadImageFromFile`` then ``M3IViews``, and
``M3IViews`` decoding ``img_path`` itself) see the same image: EXIF
orientation applied, and images over ``max_pixels`` refused from the header,
naming the file and its size."""
import struct
import time
import zlib
from importlib import resources

import numpy as np
import pytest
from PIL import Image

from m3i_mm.datasets import NamedLoadImageFromFile
from m3i_mm.datasets.transforms import ImageTooLargeError, M3IViews

PHOTO = str(resources.files('sklearn.datasets') / 'images' / 'china.jpg')
SIZE = 64


@pytest.mark.parametrize('orientation', [3, 5, 6, 8])
def test_exif_orientation_is_applied_by_both_decoders(tmp_path, orientation):
    """A JPEG with an EXIF orientation was rotated by mmcv's loader (cv2
    applies it) but not by ``M3IViews``' own decoder: different images,
    ``ori_shape`` (427, 640) against (640, 427)."""
    path = str(tmp_path / 'rotated.jpg')
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation (EXIF 2.32, tag 274)
    Image.open(PHOTO).save(path, exif=exif, quality=95)
    loaded = NamedLoadImageFromFile()(dict(img_path=path))['img']
    assert loaded.shape[:2] == ((427, 640) if orientation == 3 else
                                (640, 427))
    views = M3IViews(size=SIZE, crop_scale=(0.5, 1.0))
    for seed in range(3):
        np.random.seed(seed)
        ref = views(dict(img=loaded.copy()))
        np.random.seed(seed)
        out = views(dict(img_path=path))
        assert out['ori_shape'] == loaded.shape[:2]
        np.testing.assert_array_equal(out['view_boxes'], ref['view_boxes'])
        for a, b in zip(out['img'], ref['img']):
            diff = np.abs(a.astype(float) - b.astype(float))
            assert diff.mean() < 3.0, (seed, diff.mean())


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """A PNG chunk: length, type, data, CRC of type + data (PNG spec 5.3)."""
    return (struct.pack('>I', len(data)) + kind + data +
            struct.pack('>I', zlib.crc32(kind + data)))


@pytest.fixture(scope='module')
def huge_png(tmp_path_factory):
    """A valid 20000 x 20000 black PNG of 49 KB: 1-bit grayscale, rows of
    zeros (filter 0) deflated; decoding it makes 400 M pixels."""
    side = 20000
    deflate = zlib.compressobj(9)
    rows = (b'\0' * (1 + side // 8)) * 1000
    idat = b''.join(deflate.compress(rows) for _ in range(side // 1000))
    path = tmp_path_factory.mktemp('huge') / 'huge.png'
    path.write_bytes(
        b'\x89PNG\r\n\x1a\n' +
        png_chunk(b'IHDR', struct.pack('>IIBBBBB', side, side, 1, 0, 0, 0,
                                       0)) +
        png_chunk(b'IDAT', idat + deflate.flush()) + png_chunk(b'IEND', b''))
    return str(path)


@pytest.mark.parametrize('decoder', ['NamedLoadImageFromFile', 'M3IViews'])
def test_huge_image_is_refused_from_its_header(huge_png, decoder):
    """It took 49 s and 4.4 GB through ``NamedLoadImageFromFile`` (cv2);
    ``M3IViews`` raised Pillow's ``DecompressionBombError`` naming no
    file."""
    load = (NamedLoadImageFromFile() if decoder == 'NamedLoadImageFromFile'
            else M3IViews(size=SIZE))
    start = time.perf_counter()
    with pytest.raises(ImageTooLargeError,
                       match=rf'{huge_png} is too large to decode.*'
                       r'400000000 pixels'):
        load(dict(img_path=huge_png))
    assert time.perf_counter() - start < 0.5


@pytest.mark.parametrize('decoder', ['NamedLoadImageFromFile', 'M3IViews'])
def test_max_pixels_is_configurable(decoder):
    """The photo (640 x 427) is refused under a lower limit, naming its
    size, and loads with ``max_pixels=None``."""
    cls = NamedLoadImageFromFile if decoder == 'NamedLoadImageFromFile' \
        else M3IViews
    kwargs = {} if cls is NamedLoadImageFromFile else dict(size=SIZE)
    with pytest.raises(ImageTooLargeError,
                       match=rf'{PHOTO} is 640x427 = 273280 pixels, more '
                       r'than max_pixels=100000'):
        cls(max_pixels=100000, **kwargs)(dict(img_path=PHOTO))
    out = cls(max_pixels=None, **kwargs)(dict(img_path=PHOTO))
    assert out['ori_shape'] == (427, 640)
