"""LeRobot v2.1 layout: one parquet and one mp4 per camera per episode, jsonl metadata.

Matches lerobot@0cf8648 (the commit openpi pins): `Sequence` schema metadata, episodes_stats.jsonl
for every non-string feature, and per-episode videos whose pts start at 0.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from recap_ray.data import features as feats
from recap_ray.data import meta as meta_mod
from recap_ray.data import stats as stats_mod
from recap_ray.data import video

DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
CHUNKS_SIZE = 1000
_EPISODE_KEYS = ("episode_index", "tasks", "length")


def data_file(meta: meta_mod.Meta, episode: int) -> str:
    chunks = int(meta.info.get("chunks_size", CHUNKS_SIZE))
    return meta.info["data_path"].format(episode_chunk=episode // chunks, episode_index=episode)


def video_file(meta: meta_mod.Meta, episode: int, key: str) -> str:
    chunks = int(meta.info.get("chunks_size", CHUNKS_SIZE))
    return meta.info["video_path"].format(episode_chunk=episode // chunks, video_key=key, episode_index=episode)


def build_info(features: dict[str, dict], fps: int, robot_type: str | None, num_episodes: int, num_frames: int, num_tasks: int) -> dict:
    """info.json for a v2.1 dataset, keys in lerobot's order."""
    n_videos = len(feats.video_keys(features))
    return {
        "codebase_version": meta_mod.V21,
        "robot_type": robot_type,
        "total_episodes": num_episodes,
        "total_frames": num_frames,
        "total_tasks": num_tasks,
        "total_videos": num_episodes * n_videos,
        "total_chunks": -(-num_episodes // CHUNKS_SIZE) if num_episodes else 0,
        "chunks_size": CHUNKS_SIZE,
        "fps": fps,
        "splits": {"train": f"0:{num_episodes}"},
        "data_path": DATA_PATH,
        "video_path": VIDEO_PATH if n_videos else None,
        "features": features,
    }


def read_meta(root: Path) -> meta_mod.Meta:
    """Read meta/ of a v2.1 dataset."""
    mdir = Path(root) / "meta"
    info = meta_mod.read_json(mdir / "info.json")
    task_rows = sorted(meta_mod.read_jsonl(mdir / "tasks.jsonl"), key=lambda r: r["task_index"])
    tasks = [r["task"] for r in task_rows]
    if [r["task_index"] for r in task_rows] != list(range(len(tasks))):
        raise meta_mod.DatasetError(f"{mdir / 'tasks.jsonl'}: task_index values are not 0..{len(tasks) - 1}")
    ep_rows = meta_mod.read_jsonl(mdir / "episodes.jsonl")
    stats_path = mdir / "episodes_stats.jsonl"
    ep_stats = {r["episode_index"]: stats_mod.from_json(r["stats"]) for r in meta_mod.read_jsonl(stats_path)} if stats_path.exists() else {}
    episodes = []
    for n, row in enumerate(sorted(ep_rows, key=lambda r: r["episode_index"])):
        if row["episode_index"] != n:
            raise meta_mod.DatasetError(f"{mdir / 'episodes.jsonl'}: episode indices are not 0..N-1 (found {row['episode_index']} at position {n})")
        extra = {k: v for k, v in row.items() if k not in _EPISODE_KEYS}
        episodes.append(meta_mod.Episode(n, int(row["length"]), list(row["tasks"]), ep_stats.get(n, {}), extra))
    stats = meta_mod.read_json(mdir / "stats.json") if (mdir / "stats.json").exists() else None
    m = meta_mod.Meta(info, tasks, episodes, stats_mod.from_json(stats) if stats else None)
    if m.stats is None and episodes and all(e.stats for e in episodes):
        m.stats = stats_mod.aggregate_features([e.stats for e in episodes])
    return m


def write_meta(root: Path, meta: meta_mod.Meta) -> None:
    """Write meta/ of a v2.1 dataset (no stats.json: the v2.1 reader aggregates episodes_stats)."""
    mdir = Path(root) / "meta"
    meta_mod.write_json(mdir / "info.json", meta.info)
    meta_mod.write_jsonl(mdir / "tasks.jsonl", [{"task_index": i, "task": t} for i, t in enumerate(meta.tasks)])
    meta_mod.write_jsonl(
        mdir / "episodes.jsonl",
        [{"episode_index": e.index, "tasks": e.tasks, "length": e.length, **e.extra} for e in meta.episodes],
    )
    meta_mod.write_jsonl(
        mdir / "episodes_stats.jsonl",
        [{"episode_index": e.index, "stats": stats_mod.to_json(e.stats)} for e in meta.episodes],
    )


def episode_table(root: Path, meta: meta_mod.Meta, episode: int) -> pa.Table:
    """The parquet rows of one episode."""
    path = Path(root) / data_file(meta, episode)
    if not path.is_file():
        raise meta_mod.DatasetError(f"{path}: data file of episode {episode} is missing")
    try:
        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise meta_mod.DatasetError(f"{path}: unreadable parquet ({err})") from err


def video_segment(root: Path, meta: meta_mod.Meta, episode: int, key: str) -> video.Segment:
    """The mp4 of one episode and camera; the whole file, starting at 0."""
    length = meta.episode(episode).length
    return video.Segment(Path(root) / video_file(meta, episode, key), 0.0, length / meta.fps)
