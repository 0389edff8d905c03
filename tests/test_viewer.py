"""The rollout viewer: action and stage tables, the data it reads from encoded frames, and the page in a real browser.

The browser tests drive Debian's Chromium through selenium (`apt-get install chromium chromium-driver`).
Without it they skip; run_tests.sh installs it when it runs as root (scripts/setup_browser.sh), as in CI.
"""

import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest
import torch
from test_evaluate import small_config, small_model

from melee_encode import EncodeOptions, EncodingConfig, encode, open_store
from melee_encode.actions import ACTION_NAMES, CHARACTER_ACTION_NAMES, COMMON_STATES, action_name
from melee_encode.ids import stage_name
from melee_encode.stage_geometry import STAGE_GEOMETRY, stage_geometry
from melee_model.evaluate import name_action_ticks, rollout_curves
from melee_model.layout import layout_for
from melee_model.rollout import Trajectory, pick_starts, rollout_store
from melee_model.viewer import (
    CONTROL_FIELDS,
    VIEWER_FIELDS,
    HorizonCurves,
    ViewerRollout,
    controls_for_viewer,
    frames_for_viewer,
    page_data,
    store_rollouts,
    write_html,
)

from conftest import ROOT, replay

LEGAL_STAGES = (2, 3, 8, 28, 31, 32)
HORIZON = 150
DOCS_SCREENSHOT = ROOT / "docs" / "viewer.png"


# ---------------------------------------------------------------- tables


def test_common_action_names_match_the_games_ids():
    assert sorted(ACTION_NAMES) == list(range(COMMON_STATES))
    # Ids as libmelee's Action enum numbers them (its names differ; the states are the same).
    known = {
        0: "dead_down",
        2: "dead_right",
        4: "dead_up_star",
        12: "rebirth",
        14: "wait",
        20: "dash",
        24: "knee_bend",
        29: "fall",
        38: "damage_fall",
        42: "landing",
        43: "landing_fall_special",
        65: "attack_air_n",
        69: "attack_air_lw",
        178: "guard_on",
        179: "guard",
        212: "catch",
        233: "escape_f",
        235: "escape_n",
        236: "escape_air",
        244: "pass",
        252: "cliff_catch",
        253: "cliff_wait",
        322: "entry",
        340: "barrel_cannon_wait",
    }
    assert {i: action_name(i) for i in known} == known
    names = [*ACTION_NAMES.values(), *(n for table in CHARACTER_ACTION_NAMES.values() for n in table.values())]
    assert all(re.fullmatch(r"[a-z0-9_]+", n) for n in names)


def test_character_states_need_the_character_and_unknown_ids_are_numbers():
    assert action_name(360, 1) == action_name(360, 22) == "reflector_ground_startup"  # Fox's and Falco's shine (libmelee 0x168)
    assert action_name(353, 1) == "fire_fox_ground_startup" and action_name(353, 22) == "fire_bird_ground_startup"
    assert action_name(369, 18) == "counter_ground" and action_name(367, 18) == "dolphin_slash_ground"  # Marth (0x171, 0x16F)
    assert action_name(369, 15) == "rest_ground_left"
    assert action_name(360) == "360"  # a character state without its character
    assert action_name(359, 15) == "359"  # an id the public tables leave out
    assert action_name(341, 32) == "341"  # sandbag: no table
    assert action_name(999) == "999" and action_name(-1) == "-1"


def test_every_real_game_starts_in_entry(shared_store):
    store = open_store(shared_store)
    for game in range(store.n_games):
        floats, ints, _ = store.read_frames(game, 0, 1)
        first = frames_for_viewer(store.schema, floats, ints)["action"][0]
        assert [action_name(a) for a in first] == ["entry", "entry"], store.games["source"][game]


def test_stage_geometry_holds_the_legal_stages():
    assert set(LEGAL_STAGES) <= set(STAGE_GEOMETRY) and stage_geometry(5) is None
    for stage in LEGAL_STAGES:
        g = stage_geometry(stage)
        assert g.blast_left < g.main_left < 0 < g.main_right < g.blast_right and g.blast_bottom < 0 < g.blast_top
        assert all(g.blast_left < p.left < p.right < g.blast_right and 0 < p.height < g.blast_top for p in g.platforms)
    assert len(stage_geometry(32).platforms) == 0 and len(stage_geometry(3).platforms) == 2 and len(stage_geometry(31).platforms) == 3


def test_players_stand_on_the_stages_surfaces(shared_store):
    """Where real players stand (on_ground) is the main platform, within its edges, or one of the platforms."""
    store = open_store(shared_store)
    heights = {stage: [] for stage in LEGAL_STAGES}
    for game in range(store.n_games):
        stage = int(store.games["stage"][game])
        floats, ints, _ = store.read_frames(game)
        v = frames_for_viewer(store.schema, floats, ints)
        standing = v["on_ground"] > 0.5
        x, y = v["x"][standing], v["y"][standing]
        geometry = stage_geometry(stage)
        if geometry is None:
            continue
        on_main = np.abs(y) < 0.01
        assert (x[on_main] >= geometry.main_left - 0.2).all() and (x[on_main] <= geometry.main_right + 0.2).all()
        heights[stage] += [(h, xx) for h, xx in zip(y[y > 1], x[y > 1])]
    for stage, points in heights.items():
        values, counts = np.unique(np.round(np.array([h for h, _ in points], dtype=np.float64), 2), return_counts=True)
        common = values[counts >= 20]  # stray heights are rare (slopes, items)
        platforms = stage_geometry(stage).platforms
        on = {h: [p for p in platforms if abs(p.height - h) < 0.02] for h in common}
        assert all(on.values()), (stage, on)
        if stage in (8, 28, 31):  # games long enough to visit every platform
            assert {p for ps in on.values() for p in ps} == set(platforms), (stage, common)
        for h, x in points:
            near = [p for c, ps in on.items() if abs(h - c) < 0.01 for p in ps]
            assert not near or any(p.left - 1 <= x <= p.right + 1 for p in near), (stage, h, x)


# ---------------------------------------------------------------- the data contract


def test_frames_for_viewer_decodes_columns_by_name(shared_store):
    store = open_store(shared_store)
    schema = store.schema
    floats, ints, _ = store.read_frames(2, 1000, 1400)
    values = frames_for_viewer(schema, floats, ints)
    assert set(values) == set(VIEWER_FIELDS) and all(v.shape == (400, 2) for v in values.values())
    for p in (0, 1):
        for field in ("x", "y", "percent", "stocks", "facing", "on_ground"):
            name = f"p{p}.{field}"
            np.testing.assert_array_equal(values[field][:, p], schema.decode_float(floats[:, schema.float_index(name)], name))
        np.testing.assert_array_equal(values["action"][:, p], ints[:, schema.int_index(f"p{p}.action")])
    controls = controls_for_viewer(schema, floats)
    np.testing.assert_array_equal(controls["main_x"][:, 1], schema.decode_float(floats[:, schema.float_index("p1.main_x")], "p1.main_x"))
    assert np.abs(controls["main_x"]).max() <= 1 and controls["shoulder"].min() >= 0
    pressed_a = floats[:, schema.float_index("p0.button_A")] > 0.5
    np.testing.assert_array_equal((controls["buttons"][:, 0] & 1) == 1, pressed_a)


def test_frames_for_viewer_follows_the_schema_not_offsets(tmp_path):
    """Another encoding moves every column; the game units read back stay the same."""
    games = []
    for config in (EncodingConfig(), EncodingConfig(state_flags=False, projectiles=True, state_age_as_embed=False)):
        path = str(tmp_path / f"{len(games)}.zarr")
        encode([replay("peppi/v3.16.slp")], path, EncodeOptions(config=config, progress=False))
        store = open_store(path)
        floats, ints, _ = store.read_frames(0)
        games.append((frames_for_viewer(store.schema, floats, ints), controls_for_viewer(store.schema, floats)))
    assert games[0][0].keys() == games[1][0].keys()
    for field in VIEWER_FIELDS:
        np.testing.assert_allclose(games[0][0][field], games[1][0][field], rtol=0, atol=1e-4, err_msg=field)
    for field, values in games[0][1].items():
        np.testing.assert_allclose(values, games[1][1][field], rtol=0, atol=1e-6, err_msg=field)


def test_page_is_self_contained_and_holds_its_data(shared_store, tmp_path):
    store = open_store(shared_store)
    rollouts = store_rollouts(store, [(1, 0), (5, 10)], 60)
    curves = HorizonCurves({"pos_error": {"model": np.linspace(0, 5, 60)}, "action_match": {"model": np.ones(60)}})
    title = "a </script><b>title</b>"
    page = write_html(tmp_path / "page.html", rollouts, curves, title=title).read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page) and "<link" not in page and "@import" not in page
    assert "__DATA__" not in page and "/*SCRIPT*/" not in page and "<b>title</b>" not in page
    data = json.loads(re.search(r'<script id="viewer-data" type="application/json">(.*?)</script>', page, re.S).group(1))
    assert data == json.loads(json.dumps(page_data(rollouts, curves, title)))
    first = data["rollouts"][0]
    assert first["frames"] == 60 and first["pred"] is None and first["stage_name"] == stage_name(int(store.games["stage"][1]))
    x = store.schema.decode_float(store.read_frames(1, 0, 60)[0][:, store.schema.float_index("p0.x")], "p0.x")
    assert first["true"]["x"][0] == np.round(x.astype(np.float64), 2).tolist()


def test_rollouts_of_another_length_or_unknown_curves_are_refused():
    true = {f: np.zeros((10, 2)) for f in VIEWER_FIELDS}
    bad = ViewerRollout("r", "s", 0, 0, 31, (1, 2), true, {**true, "x": np.zeros((9, 2))}, {})
    with pytest.raises(ValueError, match="shape"):
        page_data([bad])
    with pytest.raises(ValueError, match="at least one"):
        page_data([])
    good = ViewerRollout("r", "s", 0, 0, 31, (1, 2), true, None, {f: np.zeros((10, 2)) for f in CONTROL_FIELDS})
    assert page_data([good])["rollouts"][0]["pred"] is None
    with pytest.raises(ValueError, match="unknown horizon metric"):
        page_data([good], HorizonCurves({"loss": {"model": np.zeros(10)}}))


def test_the_plot_names_actions(shared_store):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    actions = np.array([[14, 20], [20, 360], [42, 360]])
    trajectory = Trajectory((0, 0), pred={"action": actions}, true={"action": actions[::-1]})
    figure, axis = plt.subplots()
    name_action_ticks(axis, trajectory, (1, 18))
    labels = [t.get_text() for t in axis.get_yticklabels()]
    plt.close(figure)
    assert labels == ["14 wait", "20 dash", "42 landing", "360 reflector_ground_startup / dancing_blade_2_side_air"]
    wild = Trajectory((0, 0), pred={"action": np.arange(60).reshape(30, 2)}, true={"action": actions})  # an untrained model's
    figure, axis = plt.subplots()
    name_action_ticks(axis, wild, (1, 18))
    labels = [t.get_text() for t in axis.get_yticklabels()]
    plt.close(figure)
    assert labels[:3] == ["14 wait", "20 dash", "42 landing"] and len(labels) == 4


# ---------------------------------------------------------------- in a real browser


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium (Debian's) driven by selenium, logging the console, with the network cut."""
    missing = [name for name in ("chromium", "chromedriver") if shutil.which(name) is None]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("selenium (pip)")
    if missing:
        reason = f"the viewer's browser test needs {', '.join(missing)} (apt-get install chromium chromium-driver)"
        pytest.skip(reason)
    profile = tempfile.mkdtemp(prefix="melee-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--hide-scrollbars",
    ]
    for flag in flags:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {"width": 1240, "height": 1130, "deviceScaleFactor": 1, "mobile": False})
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd(
        "Network.emulateNetworkConditions", {"offline": True, "latency": 0, "downloadThroughput": 0, "uploadThroughput": 0}
    )
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def open_page(driver, path):
    driver.get(path.resolve().as_uri())
    errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors, errors


def shown(driver, element_id: str) -> str:
    return driver.find_element("id", element_id).text


def check_frame(driver, rollout: dict, frame: int):
    """The frame counter, and both players' positions and action names, as the page shows them, equal the data."""
    assert driver.find_element("id", "frame-counter").get_attribute("data-frame") == str(frame) == shown(driver, "frame-counter")
    for p in (0, 1):
        for kind in ("true", "pred") if rollout["pred"] is not None else ("true",):
            fields = rollout[kind]
            assert shown(driver, f"p{p}-{kind}-x") == f"{fields['x'][p][frame]:.2f}"
            assert shown(driver, f"p{p}-{kind}-y") == f"{fields['y'][p][frame]:.2f}"
            assert shown(driver, f"p{p}-{kind}-action") == action_name(fields["action"][p][frame], rollout["characters"][p])


def step(driver, frames: int):
    button = driver.find_element("id", "step")
    for _ in range(frames):
        button.click()


def screenshot_pixels(driver) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB"))


@pytest.fixture(scope="module")
def rollout_page(shared_store, tmp_path_factory):
    """A page of 4 rollouts of a small untrained model over the shared store's games."""
    store = open_store(shared_store)
    layout = layout_for(small_config(), store.schema)
    starts = pick_starts(store.games, np.arange(store.n_games), 4, HORIZON, layout.context_len, seed=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = rollout_store(small_model(layout), layout, store, starts, HORIZON, "cpu")
    finally:
        torch.set_num_threads(threads)
    rollouts = store_rollouts(store, result.starts, HORIZON, result.pred_floats, result.pred_ints)
    path = write_html(tmp_path_factory.mktemp("pages") / "rollouts.html", rollouts, rollout_curves(result), title="untrained small model")
    return path, json.loads(json.dumps(page_data(rollouts, rollout_curves(result))))


@pytest.mark.slow
def test_rollouts_play_in_the_browser(browser, rollout_page):
    from selenium.webdriver.support.ui import WebDriverWait

    path, data = rollout_page
    open_page(browser, path)
    assert len(browser.find_element("id", "rollout").find_elements("tag name", "option")) == 4
    check_frame(browser, data["rollouts"][0], 0)
    step(browser, 100)
    check_frame(browser, data["rollouts"][0], 100)
    wrong = [data["rollouts"][0]["pred"]["action"][p][100] != data["rollouts"][0]["true"]["action"][p][100] for p in (0, 1)]
    for p in (0, 1):  # divergence is coloured
        assert ("diverge" in browser.find_element("id", f"p{p}-pred-action").get_attribute("class")) == wrong[p]
    browser.execute_script("window.viewer.goto(0);")
    browser.find_element("id", "play").click()  # plays at 60 frames a second until paused
    WebDriverWait(browser, 10).until(lambda driver: int(shown(driver, "frame-counter")) >= 10)
    browser.find_element("id", "play").click()
    paused = shown(browser, "frame-counter")
    time.sleep(0.3)
    assert shown(browser, "frame-counter") == paused and shown(browser, "play") == "play"
    browser.execute_script("window.viewer.select(2); window.viewer.goto(149);")
    check_frame(browser, data["rollouts"][2], 149)
    browser.execute_script("window.viewer.select(0); window.viewer.goto(100);")
    pixels = screenshot_pixels(browser)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200  # stage, players, panels and curves drawn
    stage = browser.find_element("id", "stage").rect
    region = pixels[int(stage["y"]) : int(stage["y"] + stage["height"]), int(stage["x"]) : int(stage["x"] + stage["width"])]
    assert (region != 255).any(axis=-1).mean() > 0.01  # not a blank canvas
    assert not [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    save_small_png(pixels, DOCS_SCREENSHOT)


def save_small_png(pixels: np.ndarray, path):
    """The README's screenshot: a palette PNG, small enough to commit."""
    from PIL import Image

    image = Image.fromarray(pixels).quantize(colors=64, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    image.save(path, optimize=True)
    assert path.stat().st_size < 200_000


@pytest.mark.slow
def test_a_bare_replay_plays_in_the_browser(browser, shared_store, tmp_path):
    """scripts/evaluate.py --replays game.slp --html page.html, no checkpoint: the true game alone, all of it."""
    page = tmp_path / "replay.html"
    name = "peppi/ics2.slp"
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "evaluate.py"), "--replays", replay(name), "--html", str(page)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "(1 games)" in done.stdout
    store = open_store(shared_store)
    game = int(np.flatnonzero([s.endswith(name) for s in store.games["source"]])[0])
    expected = page_data(store_rollouts(store, [(game, 0)], int(store.games["length"][game])))["rollouts"][0]
    open_page(browser, page)
    check_frame(browser, expected, 0)
    step(browser, 100)
    check_frame(browser, expected, 100)
    assert shown(browser, "frame-last") == str(expected["frames"] - 1)
    assert not browser.find_element("id", "p0-pred-action").is_displayed()
    assert not browser.find_element("id", "curves").is_displayed()


def test_evaluate_writes_the_page_of_its_rollouts(shared_store, tmp_path):
    """scripts/evaluate.py --checkpoint ... --html: the page holds every rollout and the model's curves of that run."""
    from melee_model.checkpoint import save_checkpoint

    layout = layout_for(small_config(), open_store(shared_store).schema)
    state = {"config": small_config().to_dict(), "progress": {"step": 0, "epoch": 0}, "store": {"path": shared_store}}
    save_checkpoint(tmp_path / "run", 0, model=small_model(layout).state_dict(), optimizer={}, ranks=[{}], state=state, links=("best",))
    page = tmp_path / "rollouts.html"
    command = [
        sys.executable,
        str(ROOT / "scripts" / "evaluate.py"),
        "--checkpoint",
        str(tmp_path / "run" / "best"),
        "--store",
        shared_store,
        "--batches",
        "1",
        "--rollouts",
        "3",
        "--horizon",
        "40",
        "--html",
        str(page),
        "--json",
    ]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    data = json.loads(re.search(r'type="application/json">(.*?)</script>', page.read_text(), re.S).group(1))
    assert len(data["rollouts"]) == out["rollouts"] == 3 and all(r["frames"] == 40 and r["pred"] for r in data["rollouts"])
    assert data["curves"]["pos_error"]["model"][39] == pytest.approx(out["rollout"]["40"]["pos_error"], abs=1e-4)
    assert data["curves"]["action_match"]["model"][9] == pytest.approx(out["rollout"]["10"]["action_match"], abs=1e-4)
