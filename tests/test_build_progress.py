"""scripts/build_progress.py shows the mmcv build moving (count, estimate).

tests/fixtures/mmcv_build_sample.log holds lines of a real ``pip wheel -v``
build of onedl-mmcv 2.3.6 (scripts/setup_env.sh): pip indents the output of
the build it runs, so ninja's ``[n/78]`` lines start with two spaces.
"""
import importlib.util
import os.path as osp
import subprocess
import sys

from conftest import REPO

SCRIPT = osp.join(REPO, 'scripts', 'build_progress.py')
SAMPLE = osp.join(REPO, 'tests', 'fixtures', 'mmcv_build_sample.log')


def load_script():
    spec = importlib.util.spec_from_file_location('build_progress', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_progress_lines_of_a_real_build_log():
    progress_line = load_script().progress_line
    with open(SAMPLE) as f:
        lines = f.readlines()
    assert lines[6].startswith('  [1/78] c++ ')  # indented by pip -v
    # 15 s per finished unit so far.
    shown = [
        progress_line(line, elapsed_s=15. * (i + 1))
        for i, line in enumerate(lines)
    ]
    status = [s for s in shown if s and s.startswith('[')]
    assert status == [
        '[1/78] assign_score_withk.cpp, ~ 135 min left',  # 105 s / 1 * 77
        '[2/78] active_rotated_filter.cpp, ~ 95 min left',  # 150 s / 2 * 76
        '[40/78] focal_loss.cpp, ~ 3 min left',  # 165 s / 40 * 38
        '[77/78] upfirdn2d.cpp, ~ 1 min left',
        '[78/78] voxelization.cpp, done',
    ], status
    # Compiler notes, warnings and pip's chatter stay in the log only.
    assert [s for s in shown if s and not s.startswith('[')] == []


def test_estimate_is_time_per_finished_unit_times_units_left():
    progress_line = load_script().progress_line
    assert progress_line('  [40/78] c++ -c /x/a.cpp -o /x/a.o\n',
                         600.) == '[40/78] a.cpp, ~ 10 min left'
    assert progress_line('[3/4] c++ -c b.cu -o b.o', 30.) == \
        '[3/4] b.cu, ~ 1 min left'
    assert progress_line('  src/a.cpp:3:1: error: expected ;', 1.) == \
        'src/a.cpp:3:1: error: expected ;'
    assert progress_line('Successfully built onedl-mmcv', 1.) == \
        'Successfully built onedl-mmcv'


def test_script_streams_progress_and_keeps_the_whole_log(tmp_path):
    log = tmp_path / 'build.log'
    with open(SAMPLE) as f:
        res = subprocess.run([sys.executable, '-u', SCRIPT, str(log)],
                             stdin=f, capture_output=True, text=True,
                             check=True)
    assert log.read_text() == open(SAMPLE).read()
    shown = res.stderr.splitlines()
    assert len(shown) == 5 and '[1/78] assign_score_withk.cpp, ~' in shown[0]
    assert shown[-1].endswith('[78/78] voxelization.cpp, done')


def test_setup_env_pipes_the_mmcv_build_through_it():
    with open(osp.join(REPO, 'scripts', 'setup_env.sh')) as f:
        script = f.read()
    assert 'scripts/build_progress.py" "$TMPW/build.log"' in script
