"""LeRobot v3.0 layout: many episodes per parquet and mp4 file, parquet metadata.

Matches lerobot 0.4.x: `meta/episodes/chunk-*/file-*.parquet` with per-episode locations and
`stats/<feature>/<stat>` columns, `meta/tasks.parquet` indexed by task string (pandas metadata),
`meta/stats.json`, and videos whose episodes are concatenated with `from/to_timestamp` offsets.
"""

from __future__ import annotations

import bisect
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recap_ray.data import features as feats
from recap_ray.data import meta as meta_mod
from recap_ray.data import stats as stats_mod
from recap_ray.data import video

DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
CHUNKS_SIZE = 1000
DATA_FILES_SIZE_MB = 100
VIDEO_FILES_SIZE_MB = 200
_FILE_START = "_file_start"  # in-memory only: first global index of the episode's data file
_RELOCATED = "_relocated"  # in-memory only: data files were located from the files' row counts


def next_file(chunk: int, file: int, chunks_size: int = CHUNKS_SIZE) -> tuple[int, int]:
    """The (chunk_index, file_index) after the given one."""
    return (chunk + 1, 0) if file + 1 >= chunks_size else (chunk, file + 1)


def build_info(features: dict[str, dict], fps: int, robot_type: str | None, num_episodes: int, num_frames: int, num_tasks: int) -> dict:
    """info.json for a v3.0 dataset, keys in lerobot's order."""
    return {
        "codebase_version": meta_mod.V30,
        "robot_type": robot_type,
        "total_episodes": num_episodes,
        "total_frames": num_frames,
        "total_tasks": num_tasks,
        "chunks_size": CHUNKS_SIZE,
        "data_files_size_in_mb": DATA_FILES_SIZE_MB,
        "video_files_size_in_mb": VIDEO_FILES_SIZE_MB,
        "fps": fps,
        "splits": {"train": f"0:{num_episodes}"},
        "data_path": DATA_PATH,
        "video_path": VIDEO_PATH if feats.video_keys(features) else None,
        "features": features,
    }


def _stat_column(values: list[np.ndarray], stat: str, feature: dict) -> pa.Array:
    arr = [np.asarray(v) for v in values]
    integer = stat == "count" or (stat in ("min", "max") and feature["dtype"].startswith(("int", "uint", "bool")))
    inner = pa.int64() if integer else pa.float64()
    depth = arr[0].ndim
    typ = inner
    for _ in range(depth):
        typ = pa.list_(typ)
    return pa.array([a.astype(np.int64 if integer else np.float64).tolist() for a in arr], type=typ)


def _read_tasks(path: Path) -> list[str]:
    if not path.is_file():
        raise meta_mod.DatasetError(f"{path}: file is missing")
    table = pq.read_table(path)
    names = [n for n in table.column_names if n != "task_index"]
    if "task_index" not in table.column_names or len(names) != 1:
        raise meta_mod.DatasetError(f"{path}: expected columns task_index and the task string index, got {table.column_names}")
    pairs = sorted(zip(table.column("task_index").to_pylist(), table.column(names[0]).to_pylist()))
    if [i for i, _ in pairs] != list(range(len(pairs))):
        raise meta_mod.DatasetError(f"{path}: task_index values are not 0..{len(pairs) - 1}")
    return [t for _, t in pairs]


def _write_tasks(path: Path, tasks: list[str]) -> None:
    import pandas as pd  # the pandas index metadata is what lerobot 0.4 reads task strings from

    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame({"task_index": np.arange(len(tasks), dtype=np.int64)}, index=pd.Index(tasks, name="task"))
    frame.to_parquet(path)


def read_meta(root: Path) -> meta_mod.Meta:
    """Read meta/ of a v3.0 dataset."""
    root = Path(root)
    mdir = root / "meta"
    info = meta_mod.read_json(mdir / "info.json")
    tasks = _read_tasks(mdir / "tasks.parquet")
    files = sorted((mdir / "episodes").glob("chunk-*/file-*.parquet"))
    if not files:
        raise meta_mod.DatasetError(f"{mdir / 'episodes'}: no episode metadata parquet files")
    table = pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")
    rows = table.to_pylist()
    episodes = []
    for n, row in enumerate(sorted(rows, key=lambda r: r["episode_index"])):
        if row["episode_index"] != n:
            raise meta_mod.DatasetError(f"{mdir / 'episodes'}: episode indices are not 0..N-1 (found {row['episode_index']} at position {n})")
        ep_stats: dict[str, stats_mod.Stats] = {}
        location, extra = {}, {}
        for key, value in row.items():
            if key.startswith("stats/"):
                feature, stat = key[len("stats/") :].rsplit("/", 1)
                if value is not None:
                    ep_stats.setdefault(feature, {})[stat] = np.asarray(value)
            elif key.startswith(("data/", "videos/", "meta/episodes/", "dataset_")):
                location[key] = value
            elif key not in ("episode_index", "tasks", "length"):
                extra[key] = value
        episodes.append(meta_mod.Episode(n, int(row["length"]), list(row["tasks"]), ep_stats, extra, location))
    starts: dict[tuple[int, int], int] = {}
    for e in episodes:
        key = (e.location["data/chunk_index"], e.location["data/file_index"])
        starts[key] = min(starts.get(key, e.location["dataset_from_index"]), e.location["dataset_from_index"])
    for e in episodes:
        e.location[_FILE_START] = starts[(e.location["data/chunk_index"], e.location["data/file_index"])]
    stats_path = mdir / "stats.json"
    stats = stats_mod.from_json(meta_mod.read_json(stats_path)) if stats_path.exists() else None
    return meta_mod.Meta(info, tasks, episodes, stats)


def write_meta(root: Path, meta: meta_mod.Meta) -> None:
    """Write meta/ of a v3.0 dataset: info, tasks, stats and one episodes parquet file."""
    root = Path(root)
    mdir = root / "meta"
    meta_mod.write_json(mdir / "info.json", meta.info)
    _write_tasks(mdir / "tasks.parquet", meta.tasks)
    if meta.stats is not None:
        meta_mod.write_json(mdir / "stats.json", stats_mod.to_json(meta.stats))
    eps = meta.episodes
    for e in eps:
        e.location["meta/episodes/chunk_index"] = 0
        e.location["meta/episodes/file_index"] = 0
    cols: dict[str, pa.Array] = {
        "episode_index": pa.array([e.index for e in eps], pa.int64()),
        "tasks": pa.array([e.tasks for e in eps], pa.list_(pa.string())),
        "length": pa.array([e.length for e in eps], pa.int64()),
    }
    loc_keys = ["data/chunk_index", "data/file_index", "dataset_from_index", "dataset_to_index"]
    for key in meta.video_keys:
        loc_keys += [f"videos/{key}/{k}" for k in ("chunk_index", "file_index", "from_timestamp", "to_timestamp")]
    for k in loc_keys:
        cols[k] = pa.array([e.location[k] for e in eps], pa.float64() if k.endswith("timestamp") else pa.int64())
    for feature, spec in meta.features.items():
        if spec["dtype"] == "string" or not eps or any(feature not in e.stats for e in eps):
            continue
        common = [k for k in eps[0].stats[feature] if all(k in e.stats[feature] for e in eps)]
        for stat in common:
            cols[f"stats/{feature}/{stat}"] = _stat_column([e.stats[feature][stat] for e in eps], stat, spec)
    cols["meta/episodes/chunk_index"] = pa.array([0] * len(eps), pa.int64())
    cols["meta/episodes/file_index"] = pa.array([0] * len(eps), pa.int64())
    for key in sorted({k for e in eps for k in e.extra}):
        cols[key] = pa.array([e.extra.get(key) for e in eps])
    path = root / EPISODES_PATH.format(chunk_index=0, file_index=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(cols), path, compression="snappy")


def data_file(meta: meta_mod.Meta, episode: int) -> str:
    loc = meta.episode(episode).location
    return meta.info["data_path"].format(chunk_index=loc["data/chunk_index"], file_index=loc["data/file_index"])


def file_start_index(meta: meta_mod.Meta, episode: int) -> int:
    """Global `index` of the first row stored in the data file holding `episode` (computed once in read_meta)."""
    return meta.episode(episode).location[_FILE_START]


def _relocate(root: Path, meta: meta_mod.Meta) -> None:
    """Point every episode at the data file that holds its rows by lerobot's own rule: the sorted
    `data/*/*.parquet` files, concatenated, are global rows 0..N-1 (lerobot never reads
    data/file_index). Needed because lerobot 0.4.4's v2.1->v3.0 converter labels the first episode
    of each new data file with the previous file's index, and lerobot loads such datasets fine.
    Changes nothing unless the files' rows add up to total_frames (none missing or extra)."""
    for e in meta.episodes:
        e.location[_RELOCATED] = True
    spans, start = [], 0  # (first global index, chunk_index, file_index) per file
    for path in sorted(Path(root).glob("data/*/*.parquet")):
        try:
            chunk, file = int(path.parent.name.split("-")[-1]), int(path.stem.split("-")[-1])
            rows = pq.ParquetFile(path).metadata.num_rows
        except (ValueError, pa.ArrowInvalid, OSError):
            return  # not the layout's names, or unreadable: keep the metadata's locations (and errors)
        spans.append((start, chunk, file))
        start += rows
    if not spans or start != meta.total_frames:
        return
    firsts = [s for s, _, _ in spans]
    for e in meta.episodes:
        n = bisect.bisect_right(firsts, e.location["dataset_from_index"]) - 1
        e.location[_FILE_START], e.location["data/chunk_index"], e.location["data/file_index"] = spans[n]


def episode_table(root: Path, meta: meta_mod.Meta, episode: int) -> pa.Table:
    """The parquet rows of one episode, reading only the row groups that hold it. When the rows read
    are not the episode's (their `index` values differ, or the file is missing or short), the data
    files are located once from their row counts (`_relocate`), and read again if that moved them."""
    loc = meta.episode(episode).location
    error = None
    try:
        table = _episode_rows(root, meta, episode)
        index = table.column("index") if "index" in table.column_names else None
        if index is None or not len(index) or (index[0].as_py(), index[-1].as_py() + 1) == (
            loc["dataset_from_index"], loc["dataset_to_index"]):  # fmt: skip
            return table
    except meta_mod.DatasetError as err:
        table, error = None, err
    if not loc.get(_RELOCATED):
        before = (loc["data/chunk_index"], loc["data/file_index"], loc[_FILE_START])
        _relocate(root, meta)
        if before != (loc["data/chunk_index"], loc["data/file_index"], loc[_FILE_START]):
            return _episode_rows(root, meta, episode)
    if error is not None:
        raise error
    return table  # rows whose `index` values are wrong wherever they are looked for: validate reports them


def _episode_rows(root: Path, meta: meta_mod.Meta, episode: int) -> pa.Table:
    path = Path(root) / data_file(meta, episode)
    if not path.is_file():
        raise meta_mod.DatasetError(f"{path}: data file of episode {episode} is missing")
    loc = meta.episode(episode).location
    start = loc["dataset_from_index"] - file_start_index(meta, episode)
    stop = start + loc["dataset_to_index"] - loc["dataset_from_index"]
    try:
        pf = pq.ParquetFile(path)
        groups, offset, first_row = [], 0, None
        for g in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            if offset < stop and offset + n > start:
                groups.append(g)
                first_row = offset if first_row is None else first_row
            offset += n
        if stop > offset:
            raise meta_mod.DatasetError(f"{path}: has {offset} rows, episode {episode} needs rows up to {stop}")
        table = pf.read_row_groups(groups)
    except (pa.ArrowInvalid, OSError) as err:
        raise meta_mod.DatasetError(f"{path}: unreadable parquet ({err})") from err
    return table.slice(start - first_row, stop - start)


def video_segment(root: Path, meta: meta_mod.Meta, episode: int, key: str) -> video.Segment:
    """The mp4 holding one episode's camera and the episode's span inside it."""
    loc = meta.episode(episode).location
    rel = meta.info["video_path"].format(
        video_key=key, chunk_index=loc[f"videos/{key}/chunk_index"], file_index=loc[f"videos/{key}/file_index"]
    )
    return video.Segment(Path(root) / rel, float(loc[f"videos/{key}/from_timestamp"]), float(loc[f"videos/{key}/to_timestamp"]))
