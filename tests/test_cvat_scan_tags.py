"""labelpilot's own "quality:*" scan tags are findings about an image, never labels: CVAT
training and acceptance do not learn from them or count them."""

from __future__ import annotations

import json
from pathlib import Path

from labelpilot.adapters.cvat.annotations import label_infos
from labelpilot.adapters.cvat.training import snapshot_samples

LABELS = [{"id": 1, "name": "circle", "type": "rectangle"},
          {"id": 7, "name": "quality:dark", "type": "tag"}]


def test_scan_tags_are_no_labels_and_a_frame_with_only_them_is_no_sample(tmp_path: Path) -> None:
    assert set(label_infos(LABELS)) == {1}
    (tmp_path / "labels.json").write_text(json.dumps(LABELS))
    task = tmp_path / "tasks" / "5"
    task.mkdir(parents=True)
    frames = [{"index": i, "file": f"{i}.png", "width": 100, "height": 80} for i in range(3)]
    (task / "frames.json").write_text(json.dumps(frames))
    (task / "annotations.json").write_text(json.dumps({
        "shapes": [{"frame": 0, "label_id": 1, "type": "rectangle",
                    "points": [10, 10, 40, 40], "rotation": 0}],
        "tags": [{"frame": 0, "label_id": 7}, {"frame": 1, "label_id": 7}],
        "tracks": []}))
    samples, labels = snapshot_samples(tmp_path)
    assert [s.sample_id for s in samples] == ["cvat-t5-f0"], "frame 1 holds only a scan tag"
    assert samples[0].classes == () and len(samples[0].instances) == 1
    assert set(labels) == {1}
