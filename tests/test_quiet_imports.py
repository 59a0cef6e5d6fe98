"""Importing m3i_mm and the OpenMMLab stack prints no debug messages."""
import subprocess
import sys

CODE = '''
import logging
import m3i_mm
import mmdet.datasets, mmdet.datasets.transforms, mmseg.datasets
import mmpretrain.datasets
from mmengine.logging import MMLogger, print_log
print_log("info line")
print_log("warning line", level=logging.WARNING)
print_log("debug line", level=logging.DEBUG)
logger = MMLogger.get_instance("t", log_level="DEBUG")
print_log("debug to a logger", logger=logger, level=logging.DEBUG)
'''


def test_debug_messages_without_a_logger_are_not_printed():
    # The datasets of mmdet, mmseg and mmpretrain print_log a DEBUG message
    # without a logger ("Could not import OneDL") when the optional onedl
    # package is missing; mmengine's print_log then print()s it.
    res = subprocess.run([sys.executable, '-c', CODE], capture_output=True,
                         text=True, check=True)
    out = res.stdout + res.stderr
    assert 'Could not import OneDL' not in out, out
    assert 'debug line' not in out
    # Other messages are unchanged.
    assert 'info line' in res.stdout and 'warning line' in res.stdout
    assert 'debug to a logger' in out
