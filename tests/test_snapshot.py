"""The one snapshot format (``processors.snapshot``): its header, and what it refuses."""

from __future__ import annotations

import pickle
import struct
import zlib
from types import SimpleNamespace

import pytest

from pipeline.app.models import ALERT_ENGINE, TRAINER, ModelFeed, alert_engine_key
from processors.alerts import AlertEngine
from processors.churn import ChurnLabeler, ChurnModel
from processors.sentiment import SentimentModel
from processors.snapshot import MAGIC, SnapshotError, from_snapshot, read_header, to_snapshot
from processors.training import ModelTrainer


def test_the_header_layout_byte_by_byte():
    data = to_snapshot(ChurnModel())
    assert data[:4] == MAGIC == b"CEMS"
    assert data[4] == len(b"churn") and data[5:10] == b"churn"
    assert struct.unpack(">HB", data[10:13]) == (ChurnModel.SNAPSHOT_VERSION, 1)  # version, zlib
    assert pickle.loads(zlib.decompress(data[13:])).version == "churn-v1+0"
    labeler = to_snapshot(ChurnLabeler())
    assert labeler[4:12] == b"\x07labeler" and labeler[14] == 0  # not compressed: a pickle follows
    assert pickle.loads(labeler[15:]).size == 0


@pytest.mark.parametrize("kind, compressed", [
    (SentimentModel, True), (ChurnModel, True), (ChurnLabeler, False), (ModelTrainer, False), (AlertEngine, False),
])
def test_every_kind_round_trips_and_says_what_it_is(kind, compressed):
    obj = kind()
    header = read_header(to_snapshot(obj))
    assert (header.kind, header.version, header.compressed) == (kind.SNAPSHOT_KIND, kind.SNAPSHOT_VERSION, compressed)
    assert type(from_snapshot(to_snapshot(obj), kind)) is kind


def test_the_kinds_are_the_cem_models_keys():
    assert (SentimentModel.SNAPSHOT_KIND, ChurnModel.SNAPSHOT_KIND, TRAINER) == ("sentiment", "churn", "trainer")
    assert alert_engine_key([1, 0]) == "alerts/0,1" and ALERT_ENGINE == AlertEngine.SNAPSHOT_KIND + "/"


@pytest.mark.parametrize("data, message", [
    (pickle.dumps(ChurnModel()), "no CEMS header"),  # a pickle as published before this format
    (zlib.compress(pickle.dumps(ChurnModel())), "no CEMS header"),
    (b"CEMS\x05chu", "cut short"),
    (b"CEMS\x05churn\x00\x01\x07payload", "unknown snapshot compression 7"),
    (b"CEMS\x05churn\x00\x01\x01not zlib", "'churn' snapshot does not load"),
    (b"CEMS\x05churn\x00\x01\x00not a pickle", "'churn' snapshot does not load"),
    (b"CEMS\x05churn\x00\x02\x00", "'churn' snapshot of version 2: this code reads version 1"),
    (to_snapshot(ChurnLabeler()), "a 'labeler' snapshot, not a 'churn' one"),
])
def test_what_is_not_a_churn_snapshot_of_this_version_is_refused(data, message):
    with pytest.raises(SnapshotError, match=message):
        from_snapshot(data, ChurnModel)
    assert issubclass(SnapshotError, ValueError)  # what the worker catches around its alert engine


def test_a_snapshot_whose_payload_is_another_class_is_refused():
    forged = to_snapshot(ChurnModel())[:13] + zlib.compress(pickle.dumps(ChurnLabeler()))
    with pytest.raises(SnapshotError, match="holds a ChurnLabeler, not a ChurnModel"):
        from_snapshot(forged, ChurnModel)


def test_a_trainer_holding_a_part_of_another_version_is_refused(monkeypatch):
    data = to_snapshot(ModelTrainer())
    monkeypatch.setattr(ChurnModel, "SNAPSHOT_VERSION", 2)
    with pytest.raises(SnapshotError, match="trainer snapshot with parts of versions"):
        from_snapshot(data, ModelTrainer)


def test_a_restored_alert_engine_carries_on_and_takes_the_current_rules():
    from processors.alerts import AlertConfig

    engine = AlertEngine(AlertConfig(churn_threshold=0.9))
    engine.late_events = 4
    restored = from_snapshot(to_snapshot(engine), AlertEngine)
    assert restored.late_events == 4 and restored.config.churn_threshold == 0.9  # as it ran
    restored.config = AlertConfig()  # what the worker does: the rules as configured now
    assert restored.config.churn_threshold == 0.7


def test_the_model_feed_skips_what_it_cannot_load_and_keeps_scoring():
    swapped: list = []
    feed = ModelFeed("unused:9092", lambda key, model: swapped.append((key, model)))
    old = SimpleNamespace(key=b"churn", value=zlib.compress(pickle.dumps(ChurnModel())))  # the format before
    feed._take([old, SimpleNamespace(key=TRAINER.encode(), value=b"\x80old trainer")])
    assert swapped == [] and feed.loaded == 0 and feed.trainer() is None  # the trainer starts afresh
    feed._take([SimpleNamespace(key=b"sentiment", value=to_snapshot(SentimentModel()))])
    assert [key for key, _ in swapped] == ["sentiment"] and feed.loaded == 1
