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
