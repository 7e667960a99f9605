"""Pictures side by side keep their grey levels."""

import numpy as np
from PIL import Image

from jaxgen import viz


def test_panels_show_grey_levels_as_they_are(tmp_path):
    """A nearly flat grey grid (a collapsed GAN's) next to a black-and-white one stays grey: each
    panel is not stretched to its own range."""
    flat = np.full((60, 60), 100, np.uint8)
    flat[:2], flat[30, 30] = 0, 104  # black padding, one brighter pixel
    stark = np.zeros((60, 60), np.uint8)
    stark[10:50, 10:50] = 255
    paths = {}
    for name, grid in (("flat", flat), ("stark", stark)):
        paths[name] = str(tmp_path / f"{name}.png")
        Image.fromarray(grid, mode="L").save(paths[name])
    viz.save_picture_panels(paths, str(tmp_path / "panels.png"))
    out = np.asarray(Image.open(tmp_path / "panels.png").convert("L"))
    left = out[:, : out.shape[1] // 2]
    values, counts = np.unique(left[left < 250], return_counts=True)  # the white page aside
    assert abs(int(values[np.argmax(counts)]) - 100) <= 3


def test_importing_and_plotting_leave_the_users_backend_alone(tmp_path):
    """A notebook's or a GUI's matplotlib backend survives importing jaxgen and its plots."""
    import subprocess
    import sys

    from helpers import REPO

    path = tmp_path / "curves.png"
    code = ("import matplotlib; matplotlib.use('svg'); from jaxgen import viz; "
            f"viz.plot_curves({{'D_loss': [1.0, 0.5, 0.7]}}, {str(path)!r}); "
            "print(matplotlib.get_backend())")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "svg"
    with Image.open(path) as picture:
        assert picture.format == "PNG" and picture.size[0] > 100
