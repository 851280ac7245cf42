"""The review event over HTTP (gradio_client): a readable error before loading, a status line when there
is nothing to review, and the jump to the planted failure after a run."""

from __future__ import annotations

from test_ui_review import write_gap_volume
from test_ui_server import MODEL, WIN, client, click_at, load


def test_next_to_review_over_http(app_server, tmp_path):
    from gradio_client.exceptions import AppError

    c = client(app_server, tmp_path, "review")
    # before loading: a readable message (an error, or the status line where errors are shown there)
    try:
        out = c.predict(0, 1, *WIN, False, api_name="/next_to_review")
    except AppError as exc:
        assert "Load images first" in str(exc)
    else:
        assert "Load images first" in str(out[-1]), out
    load(c, [write_gap_volume(tmp_path / "gap")])
    out = c.predict(0, 8, *WIN, False, api_name="/next_to_review")
    assert "Nothing to review: run a segmentation first." in out[-1]
    click_at(c, 32, 33, slice1=8)
    c.predict(0, 8, "volume", "transfer", MODEL, *WIN, False, api_name="/run")
    out = c.predict(0, 8, *WIN, False, api_name="/next_to_review")
    # outputs: the view outputs (image, slider, case, info, ...) then the status
    slider, info = out[1], out[3]
    assert slider["value"] == 11 and "slice 11 / 15" in info and "lost mid-volume" in info, (slider, info)
