"""Dataset readers: the real shared sets, small faithful fixtures of each layout,
and every validation error (each names its file and line)."""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest

from amr.datasets import LAYOUTS, detect_layout, load_dataset, load_queries
from amr.errors import AmrError

# ---------------------------------------------------------------- helpers


@pytest.fixture(scope="session")
def data(shared: Path) -> Path:
    return shared / "data"


@pytest.fixture(scope="session")
def wav(data: Path) -> Path:
    """A real 5 s ESC-50 clip."""
    return data / "sounds" / "audio" / "esc50-2-103426-A-3.wav"


def place(src: Path, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    return dest


def write_lines(path: Path, lines: list[str | dict], encoding: str = "utf-8") -> Path:
    text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    path.write_bytes(text.encode(encoding))
    return path


def generic_root(tmp_path: Path, wav: Path, lines: list[str | dict]) -> Path:
    """A generic folder with audio/a.wav and audio/b.wav and the given items.jsonl lines."""
    for name in ("a", "b"):
        place(wav, tmp_path / "audio" / f"{name}.wav")
    write_lines(tmp_path / "items.jsonl", lines)
    return tmp_path


GOOD_A = {"id": "a", "audio": "audio/a.wav"}

# ---------------------------------------------------------------- the real shared sets


def test_clotho_mini(data: Path) -> None:
    dataset = load_dataset(data / "clotho-mini")
    assert dataset.name == "clotho-mini"
    assert len(dataset.items) == 7
    assert sum(len(item.captions) for item in dataset.items) == 35
    assert {item.split for item in dataset.items} == {"test"}
    assert all(item.metadata == {} for item in dataset.items)
    pug = next(item for item in dataset.items if item.id == "01 A pug struggles to breathe 1_14_2008.wav")
    assert Path(pug.audio).is_absolute() and Path(pug.audio).is_file()
    assert pug.captions[1] == "A small dog with a flat face snoring and groaning"
    assert dataset.queries == []


def test_sounds(data: Path) -> None:
    dataset = load_dataset(data / "sounds")
    assert len(dataset.items) == 39
    assert sum(1 for item in dataset.items if not item.metadata) == 15  # the MAX-Audio-Classifier clips
    cat = next(item for item in dataset.items if item.id == "bigsoundbank-cat")
    assert cat.metadata == {"title": "meow cat 1"}
    assert cat.captions == ["cat"]
    assert cat.audio == str(data.resolve() / "sounds" / "audio" / "bigsoundbank-cat.mp3")


def test_sfx_dev(data: Path) -> None:
    dataset = load_dataset(data / "sfx-dev")
    assert len(dataset.items) == 856
    assert Counter(item.split for item in dataset.items) == {"train": 685, "val": 90, "test": 81}
    assert len({item.id for item in dataset.items}) == 856


# ---------------------------------------------------------------- layout detection


def test_detect_layout(data: Path, tmp_path: Path, wav: Path) -> None:
    assert detect_layout(data / "clotho-mini") == "clotho"
    assert detect_layout(data / "sounds") == "generic"
    assert detect_layout(data / "sfx-dev") == "generic"
    assert detect_layout(audiocaps_root(tmp_path / "ac", wav)) == "audiocaps"
    assert set(LAYOUTS) == {"generic", "clotho", "audiocaps", "wavcaps", "folder"}
    (tmp_path / "empty").mkdir()
    with pytest.raises(AmrError, match="no known dataset layout"):
        load_dataset(tmp_path / "empty")


def test_a_train_csv_without_audiocap_id_is_not_audiocaps(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text("file,label\nx.wav,dog\n")
    with pytest.raises(AmrError, match="no known dataset layout"):
        detect_layout(tmp_path)


def test_named_layout(data: Path, tmp_path: Path) -> None:
    assert len(load_dataset(data / "sounds", layout="generic").items) == 39
    with pytest.raises(AmrError, match="unknown dataset layout 'esc50'"):
        load_dataset(data / "sounds", layout="esc50")
    with pytest.raises(AmrError, match="no clotho_captions_"):
        load_dataset(data / "sounds", layout="clotho")
    with pytest.raises(AmrError, match="not a directory"):
        load_dataset(tmp_path / "missing")


# ---------------------------------------------------------------- Clotho


def clotho_root(root: Path, data: Path) -> Path:
    """Two development clips (clotho_audio_development/), one validation clip (plain
    validation/), a latin-1 development metadata file that leaves one clip out,
    and a cp1252 validation metadata file."""
    source = data / "clotho-mini" / "clotho_audio_evaluation"
    place(source / "Flipping Pages.wav", root / "clotho_audio_development" / "Flipping Pages.wav")
    place(source / "Tenerife_bazaar_2.wav", root / "clotho_audio_development" / "Tenerife_bazaar_2.wav")
    place(source / "02-Bakken_Rollercoaster.wav", root / "validation" / "02-Bakken_Rollercoaster.wav")
    header = "file_name,caption_1,caption_2,caption_3,caption_4,caption_5"
    write_lines(
        root / "clotho_captions_development.csv",
        [
            header,
            "Flipping Pages.wav,Pages turn.,A book is read.,Paper rustles.,Someone flips pages.,Pages are turned.",
            'Tenerife_bazaar_2.wav,"People talk, laugh.",A crowd chats.,Folks laugh.,Adults talk.,People chat.',
        ],
    )
    write_lines(
        root / "clotho_captions_validation.csv",
        [header, "02-Bakken_Rollercoaster.wav,A roller coaster.,People scream.,Wheels roar.,Brakes hiss.,A ride."],
    )
    meta_header = "file_name,keywords,sound_id,sound_link,start_end_samples,manufacturer,license"
    write_lines(
        root / "clotho_metadata_development.csv",
        [meta_header, 'Flipping Pages.wav,page;café;paper;,61,https://freesound.org/s/61,"[0, 100]",Müller,CC0'],
        encoding="latin-1",
    )
    write_lines(
        root / "clotho_metadata_validation.csv",
        [meta_header, "02-Bakken_Rollercoaster.wav,ride;\u2019scream\u2019,62,link,[0],someone,CC-BY"],
        encoding="cp1252",
    )
    return root


def test_clotho_with_metadata(data: Path, tmp_path: Path) -> None:
    dataset = load_dataset(clotho_root(tmp_path / "clotho", data))
    assert dataset.name == "clotho"
    assert [(item.id, item.split) for item in dataset.items] == [
        ("Flipping Pages.wav", "train"),
        ("Tenerife_bazaar_2.wav", "train"),
        ("02-Bakken_Rollercoaster.wav", "val"),
    ]
    pages, bazaar, coaster = dataset.items
    assert pages.metadata == {"keywords": ["page", "café", "paper"]}
    assert bazaar.metadata == {}  # not in the metadata file
    assert coaster.metadata == {"keywords": ["ride", "\u2019scream\u2019"]}
    assert bazaar.captions[0] == "People talk, laugh."
    assert len(pages.captions) == 5
    assert coaster.audio == str(tmp_path.resolve() / "clotho" / "validation" / "02-Bakken_Rollercoaster.wav")


def test_clotho_metadata_naming_an_unknown_file(data: Path, tmp_path: Path) -> None:
    root = clotho_root(tmp_path, data)
    with open(root / "clotho_metadata_development.csv", "a") as f:
        f.write("Nowhere.wav,x,1,l,[0],m,CC0\n")
    with pytest.raises(AmrError, match=r"clotho_metadata_development\.csv:3: file_name 'Nowhere.wav' is not in"):
        load_dataset(root)


def test_clotho_missing_audio_file(data: Path, tmp_path: Path) -> None:
    root = clotho_root(tmp_path, data)
    (root / "clotho_audio_development" / "Tenerife_bazaar_2.wav").unlink()
    with pytest.raises(AmrError, match=r"clotho_captions_development\.csv:3: audio file not found: .*Tenerife"):
        load_dataset(root)
    skipped: list[str] = []
    dataset = load_dataset(root, lenient=True, on_skip=skipped.append)
    assert [item.id for item in dataset.items] == ["Flipping Pages.wav", "02-Bakken_Rollercoaster.wav"]
    assert len(skipped) == 1 and "clotho_captions_development.csv:3: audio file not found" in skipped[0]


def test_clotho_missing_audio_folder(data: Path, tmp_path: Path) -> None:
    root = clotho_root(tmp_path, data)
    shutil.rmtree(root / "validation")
    with pytest.raises(AmrError, match=r"clotho_captions_validation\.csv: no audio folder for its 1 clips"):
        load_dataset(root)


def test_clotho_unknown_split_and_empty_caption_row(data: Path, tmp_path: Path) -> None:
    root = clotho_root(tmp_path, data)
    (root / "clotho_captions_holdout.csv").write_text("file_name,caption_1\n")
    with pytest.raises(AmrError, match=r"clotho_captions_holdout\.csv: unknown split 'holdout'"):
        load_dataset(root)
    (root / "clotho_captions_holdout.csv").unlink()
    with open(root / "clotho_captions_validation.csv", "a") as f:
        f.write("Flipping Pages.wav,,,,,\n")
    with pytest.raises(AmrError, match=r"clotho_captions_validation\.csv:3: no caption for 'Flipping Pages.wav'"):
        load_dataset(root)


def test_clotho_duplicate_across_splits(data: Path, tmp_path: Path) -> None:
    root = clotho_root(tmp_path, data)
    place(root / "clotho_audio_development" / "Flipping Pages.wav", root / "validation" / "Flipping Pages.wav")
    with open(root / "clotho_captions_validation.csv", "a") as f:
        f.write("Flipping Pages.wav,a,b,c,d,e\n")
    with pytest.raises(AmrError, match=r"validation\.csv:3: duplicate file_name 'Flipping Pages.wav' \(first at .*development\.csv:2\)"):
        load_dataset(root)


# ---------------------------------------------------------------- AudioCaps

CLASS_LABELS = """index,mid,display_name
0,/m/09x0r,"Speech"
74,/m/0bt9lr,"Dog"
75,/m/05tny_,"Bark"
81,/m/01yrx,"Cat"
289,/m/06mb1,"Rain"
"""
SEGMENTS_HEADER = (
    "# Segments csv created Sun Mar  5 10:54:31 2017\n"
    "# num_ytids=3, num_segs=3, num_unique_labels=4, num_positive_labels=5\n"
    "# YTID, start_seconds, end_seconds, positive_labels\n"
)


def audiocaps_root(root: Path, wav: Path) -> Path:
    """Four clips with their audio in each supported place and naming: train
    (two clips, one with two captions), val, and test with five captions;
    AudioSet tags for two of them, from two segment files."""
    root.mkdir(parents=True)
    write_lines(
        root / "train.csv",
        [
            "audiocap_id,youtube_id,start_time,caption",
            "91139,r1nicOVtvkQ,130,A dog barks repeatedly",
            "58146,UDGBjjwyaqE,20,Rain falls on a roof",
            '91140,r1nicOVtvkQ,130,"A dog barks, then whines"',
        ],
    )
    write_lines(root / "val.csv", ["audiocap_id,youtube_id,start_time,caption", "97151,vfY_TJq7n_U,130,A cat meows"])
    write_lines(
        root / "test.csv",
        ["audiocap_id,youtube_id,start_time,caption"] + [f"{103549 + k},7fmOlUlwoNg,20,A man speaks number {k}" for k in range(5)],
    )
    place(wav, root / "audio" / "train" / "r1nicOVtvkQ.wav")
    place(wav, root / "train" / "YUDGBjjwyaqE.wav")
    place(wav, root / "audio" / "vfY_TJq7n_U.wav")
    place(wav, root / "7fmOlUlwoNg.wav")
    (root / "class_labels_indices.csv").write_text(CLASS_LABELS)
    (root / "balanced_train_segments.csv").write_text(
        SEGMENTS_HEADER + 'r1nicOVtvkQ, 130.000, 140.000, "/m/0bt9lr,/m/05tny_"\n' + 'notInAudioCaps, 0.000, 10.000, "/m/nonsense"\n'
    )
    (root / "unbalanced_train_segments.csv").write_text(SEGMENTS_HEADER + 'UDGBjjwyaqE, 20.000, 30.000, "/m/06mb1"\n')
    return root


def test_audiocaps(tmp_path: Path, wav: Path) -> None:
    root = audiocaps_root(tmp_path / "audiocaps", wav)
    dataset = load_dataset(root)
    assert dataset.name == "audiocaps"
    by_id = {item.id: item for item in dataset.items}
    assert [item.id for item in dataset.items] == ["r1nicOVtvkQ", "UDGBjjwyaqE", "vfY_TJq7n_U", "7fmOlUlwoNg"]
    dog = by_id["r1nicOVtvkQ"]
    assert dog.split == "train"
    assert dog.captions == ["A dog barks repeatedly", "A dog barks, then whines"]
    assert dog.metadata == {"tags": ["Dog", "Bark"]}
    assert dog.audio == str(root.resolve() / "audio" / "train" / "r1nicOVtvkQ.wav")
    assert by_id["UDGBjjwyaqE"].metadata == {"tags": ["Rain"]}
    assert by_id["UDGBjjwyaqE"].audio.endswith("/train/YUDGBjjwyaqE.wav")
    assert by_id["vfY_TJq7n_U"].split == "val" and by_id["vfY_TJq7n_U"].metadata == {}
    speech = by_id["7fmOlUlwoNg"]
    assert speech.split == "test" and len(speech.captions) == 5
    assert speech.audio == str(root.resolve() / "7fmOlUlwoNg.wav")


def test_audiocaps_without_labels(tmp_path: Path, wav: Path) -> None:
    root = audiocaps_root(tmp_path / "ac", wav)
    for name in ("class_labels_indices.csv", "balanced_train_segments.csv", "unbalanced_train_segments.csv"):
        (root / name).unlink()
    assert all(item.metadata == {} for item in load_dataset(root).items)


def test_audiocaps_missing_audio(tmp_path: Path, wav: Path) -> None:
    root = audiocaps_root(tmp_path / "ac", wav)
    (root / "audio" / "vfY_TJq7n_U.wav").unlink()
    missing = r"val\.csv:2: no audio for youtube_id 'vfY_TJq7n_U' \(looked for .* in audio/val/, val/, audio/, \./\)"
    with pytest.raises(AmrError, match=missing):
        load_dataset(root)
    skipped: list[str] = []
    assert len(load_dataset(root, lenient=True, on_skip=skipped.append).items) == 3
    assert len(skipped) == 1 and "val.csv:2" in skipped[0]


def test_audiocaps_label_errors(tmp_path: Path, wav: Path) -> None:
    root = audiocaps_root(tmp_path / "ac", wav)
    with open(root / "unbalanced_train_segments.csv", "a") as f:
        f.write('vfY_TJq7n_U, 130.000, 140.000, "/m/01yrx,/m/zzzz"\n')
    with pytest.raises(AmrError, match=r"unbalanced_train_segments\.csv:5: unknown label /m/zzzz"):
        load_dataset(root)
    (root / "class_labels_indices.csv").unlink()
    with pytest.raises(AmrError, match=r"balanced_train_segments\.csv: .*class_labels_indices\.csv .* is missing"):
        load_dataset(root)


def test_audiocaps_clip_in_two_splits(tmp_path: Path, wav: Path) -> None:
    root = audiocaps_root(tmp_path / "ac", wav)
    with open(root / "test.csv", "a") as f:
        f.write("1,r1nicOVtvkQ,130,A dog\n")
    with pytest.raises(AmrError, match=r"test\.csv:7: youtube_id 'r1nicOVtvkQ' is already in split train \(.*train\.csv:2\)"):
        load_dataset(root)


# ---------------------------------------------------------------- generic


def test_generic_normalises_metadata(tmp_path: Path, wav: Path) -> None:
    root = generic_root(
        tmp_path,
        wav,
        [
            {
                "id": "a",
                "audio": "./audio/../audio/a.wav",
                "split": "Validation",
                "metadata": {"keywords": "dog; bark;;dog", "tags": [" Dog ", ""], "title": "  Barking  ", "description": ""},
                "captions": [" a dog barks ", ""],
                "source": {"license": "CC0"},
            },
            "",
            {"id": "b", "audio": "audio/b.wav", "metadata": {"keywords": [], "title": " "}, "split": None},
        ],
    )
    a, b = load_dataset(root).items
    assert a.audio == str(root.resolve() / "audio" / "a.wav")
    assert a.split == "val"
    assert a.metadata == {"keywords": ["dog", "bark"], "tags": ["Dog"], "title": "Barking"}
    assert a.captions == ["a dog barks"]
    assert (b.split, b.metadata, b.captions) == ("train", {}, [])


@pytest.mark.parametrize(
    ("split", "expected"),
    [("train", "train"), ("development", "train"), ("dev", "val"), ("valid", "val"), ("eval", "test"), ("evaluation", "test")],
)
def test_split_synonyms(tmp_path: Path, wav: Path, split: str, expected: str) -> None:
    root = generic_root(tmp_path, wav, [{**GOOD_A, "split": split}])
    assert load_dataset(root).items[0].split == expected


def test_generic_csv(tmp_path: Path, wav: Path) -> None:
    for name in ("a", "b"):
        place(wav, tmp_path / "clips" / f"{name}.wav")
    (tmp_path / "items.csv").write_text(
        "id,audio,split,keywords,tags,title,description,captions,source\n"
        'a,clips/a.wav,test,"dog; bark",Dog,Barking dog,,"a dog barks;a dog, barking",freesound\n'
        "b,clips/b.wav,,,,,,,\n"
    )
    a, b = load_dataset(tmp_path).items
    assert (a.id, a.split) == ("a", "test")
    assert a.metadata == {"keywords": ["dog", "bark"], "tags": ["Dog"], "title": "Barking dog"}
    assert a.captions == ["a dog barks", "a dog, barking"]
    assert (b.split, b.metadata, b.captions) == ("train", {}, [])


def test_generic_both_files(tmp_path: Path, wav: Path) -> None:
    root = generic_root(tmp_path, wav, [GOOD_A])
    (root / "items.csv").write_text("id,audio\na,audio/a.wav\n")
    with pytest.raises(AmrError, match="both items.jsonl and items.csv exist"):
        load_dataset(root)


def test_empty_dataset(tmp_path: Path, wav: Path) -> None:
    root = generic_root(tmp_path, wav, ["", "  "])
    with pytest.raises(AmrError, match="no items"):
        load_dataset(root)


ITEM_ERRORS = [
    ("{not json", "invalid JSON"),
    ("[1, 2]", "expected a JSON object, found an array"),
    ({"audio": "audio/b.wav"}, "missing 'id'"),
    ({"id": 5, "audio": "audio/b.wav"}, "'id' must be a string, found a number"),
    ({"id": " ", "audio": "audio/b.wav"}, "'id' is empty"),
    ({"id": "b"}, "missing 'audio'"),
    ({"id": "b", "audio": "audio/nope.wav"}, "audio file not found: .*audio/nope.wav"),
    (GOOD_A, r"duplicate id 'a' \(first on line 1\)"),
    ({"id": "b", "audio": "audio/b.wav", "split": "holdout"}, "unknown split 'holdout'"),
    ({"id": "b", "audio": "audio/b.wav", "split": 2}, "'split' must be a string"),
    ({"id": "b", "audio": "audio/b.wav", "metadata": "dog"}, "'metadata' must be an object, found a string"),
    ({"id": "b", "audio": "audio/b.wav", "metadata": {"title": ["x"]}}, "'metadata.title' must be a string"),
    ({"id": "b", "audio": "audio/b.wav", "metadata": {"keywords": [1]}}, "'metadata.keywords' must be a list of strings"),
    ({"id": "b", "audio": "audio/b.wav", "metadata": {"author": "x"}}, "unknown metadata field 'author'"),
    ({"id": "b", "audio": "audio/b.wav", "captions": "a cat"}, "'captions' must be a list of strings"),
    # strings that cannot be stored as UTF-8 (they would fail the cache write, after all the work)
    ({"id": "b\ud800", "audio": "audio/b.wav"}, "'id' holds a lone surrogate"),
    ({"id": "b", "audio": "audio/b.wav", "metadata": {"title": "x\udc80"}}, "'metadata.title' holds a lone surrogate"),
    ({"id": "b", "audio": "audio/b.wav", "captions": ["fine", "\udfff"]}, r"'captions\[1\]' holds a lone surrogate"),
    ({"id": "b", "audio": "audio/b.wav", "source": {"\ud800": 1}}, r"'source.\\ud800' holds a lone surrogate"),
    # audio outside the dataset folder
    ({"id": "b", "audio": "../b.wav"}, r"audio path '\.\./b\.wav' is outside the dataset folder"),
    ({"id": "b", "audio": "/etc/hostname"}, r"audio path '/etc/hostname' is outside the dataset folder .* --allow-outside-root"),
]


@pytest.mark.parametrize(("line", "problem"), ITEM_ERRORS)
def test_item_errors_name_file_and_line(tmp_path: Path, wav: Path, line: str | dict, problem: str) -> None:
    root = generic_root(tmp_path, wav, [GOOD_A, line])
    with pytest.raises(AmrError, match=re.escape(str(root.resolve() / "items.jsonl")) + ":2: " + problem):
        load_dataset(root)
    skipped: list[str] = []
    dataset = load_dataset(root, lenient=True, on_skip=skipped.append)
    assert [item.id for item in dataset.items] == ["a"]
    assert len(skipped) == 1 and re.search(r"items\.jsonl:2: " + problem, skipped[0])


def test_non_utf8_jsonl_line(tmp_path: Path, wav: Path) -> None:
    root = generic_root(tmp_path, wav, [GOOD_A])
    with open(root / "items.jsonl", "ab") as f:
        f.write('{"id": "b", "audio": "audio/b.wav", "captions": ["caf\u00e9"]}\n'.encode("latin-1"))
    with pytest.raises(AmrError, match=r"items\.jsonl:2: not UTF-8"):
        load_dataset(root)


def test_csv_errors_name_file_and_line(tmp_path: Path, wav: Path) -> None:
    place(wav, tmp_path / "a.wav")
    (tmp_path / "items.csv").write_text('id,audio,title\na,a.wav,x\nb,"b.wav",y,extra\n')
    with pytest.raises(AmrError, match=r"items\.csv:3: expected 3 fields, found 4"):
        load_dataset(tmp_path)
    (tmp_path / "items.csv").write_text("name,audio\na,a.wav\n")
    with pytest.raises(AmrError, match=r"items\.csv:1: missing column id \(the header has name, audio\)"):
        load_dataset(tmp_path)


def test_csv_line_numbers_follow_multiline_fields(tmp_path: Path, wav: Path) -> None:
    place(wav, tmp_path / "a.wav")
    (tmp_path / "items.csv").write_text('id,audio,description\na,a.wav,"two\nlines"\nb,missing.wav,\n')
    with pytest.raises(AmrError, match=r"items\.csv:4: audio file not found"):
        load_dataset(tmp_path)


# ---------------------------------------------------------------- queries


def test_queries_beside_a_dataset(tmp_path: Path, wav: Path) -> None:
    root = generic_root(tmp_path, wav, [GOOD_A, {"id": "b", "audio": "audio/b.wav"}])
    write_lines(
        root / "queries.jsonl",
        [
            {"id": "q1", "text": " a dog barking ", "relevant": ["a", "b", "a"], "split": "evaluation"},
            {"id": "q2", "text": "rain", "relevant": ["b"], "extra": 1},
        ],
    )
    q1, q2 = load_dataset(root).queries
    assert (q1.id, q1.text, q1.relevant, q1.split) == ("q1", "a dog barking", ["a", "b"], "test")
    assert (q2.relevant, q2.split) == (["b"], None)


def test_load_queries_standalone(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "queries.jsonl", [{"id": "q1", "text": "a dog", "relevant": ["x"]}])
    assert [query.relevant for query in load_queries(path, None)] == [["x"]]
    with pytest.raises(AmrError, match=r"queries\.jsonl:1: unknown relevant id 'x'"):
        load_queries(path, {"a"})
    with pytest.raises(AmrError, match="no such file"):
        load_queries(tmp_path / "nope.jsonl", None)


QUERY_ERRORS = [
    ("{", "invalid JSON"),
    ({"text": "dog", "relevant": ["a"]}, "missing 'id'"),
    ({"id": "q2", "text": "  ", "relevant": ["a"]}, "'text' is empty"),
    ({"id": "q2", "relevant": ["a"]}, "missing 'text'"),
    ({"id": "q2", "text": "dog"}, "missing 'relevant'"),
    ({"id": "q2", "text": "dog", "relevant": "a"}, "'relevant' must be a list of item ids"),
    ({"id": "q2", "text": "dog", "relevant": []}, "'relevant' is empty"),
    ({"id": "q2", "text": "dog", "relevant": ["a", "zz"]}, "unknown relevant id 'zz'"),
    ({"id": "q1", "text": "dog", "relevant": ["a"]}, r"duplicate query id 'q1' \(first on line 1\)"),
    ({"id": "q2", "text": "dog", "relevant": ["a"], "split": "holdout"}, "unknown split 'holdout'"),
    ({"id": "q2", "text": "dog \ud800", "relevant": ["a"]}, "'text' holds a lone surrogate"),
]


@pytest.mark.parametrize(("line", "problem"), QUERY_ERRORS)
def test_query_errors_name_file_and_line(tmp_path: Path, line: str | dict, problem: str) -> None:
    path = write_lines(tmp_path / "queries.jsonl", [{"id": "q1", "text": "cat", "relevant": ["a"]}, line])
    with pytest.raises(AmrError, match=re.escape(str(path)) + ":2: " + problem):
        load_queries(path, {"a"})
    skipped: list[str] = []
    assert [query.id for query in load_queries(path, {"a"}, lenient=True, on_skip=skipped.append)] == ["q1"]
    assert len(skipped) == 1 and re.search(r"queries\.jsonl:2: " + problem, skipped[0])


# ---------------------------------------------------------------- lenient loading


def test_lenient_skips_and_reports_every_bad_row(tmp_path: Path, wav: Path) -> None:
    root = generic_root(
        tmp_path,
        wav,
        [GOOD_A, "{oops", {"id": "gone", "audio": "audio/gone.wav"}, GOOD_A, {"id": "b", "audio": "audio/b.wav"}],
    )
    write_lines(
        root / "queries.jsonl",
        [{"id": "q1", "text": "dog", "relevant": ["a"]}, {"id": "q2", "text": "gone", "relevant": ["gone"]}],
    )
    with pytest.raises(AmrError, match=r"items\.jsonl:2: invalid JSON"):
        load_dataset(root)
    skipped: list[str] = []
    dataset = load_dataset(root, lenient=True, on_skip=skipped.append)
    assert [item.id for item in dataset.items] == ["a", "b"]
    assert [query.id for query in dataset.queries] == ["q1"]
    assert [re.sub(r"^.*/", "", message.split(": ")[0]) for message in skipped] == [
        "items.jsonl:2",
        "items.jsonl:3",
        "items.jsonl:4",
        "queries.jsonl:2",
    ]


def test_lenient_reports_on_stderr_by_default(tmp_path: Path, wav: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = generic_root(tmp_path, wav, [GOOD_A, {"id": "gone", "audio": "audio/gone.wav"}])
    assert len(load_dataset(root, lenient=True).items) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "skipped" in captured.err and "items.jsonl:2: audio file not found" in captured.err.replace("\n", "")


# ---------------------------------------------------------------- file stamps, encodings, audio outside the root


def test_items_record_their_file_size_and_time(data: Path) -> None:
    for item in load_dataset(data / "sounds").items:
        stat = Path(item.audio).stat()
        assert (item.audio_size, item.audio_mtime_ns) == (stat.st_size, stat.st_mtime_ns)


def test_audio_outside_the_root(tmp_path: Path, wav: Path) -> None:
    root = tmp_path / "set"
    place(wav, tmp_path / "shared" / "x.wav")
    place(wav, root / "audio" / "in.wav")
    write_lines(
        root / "items.jsonl",
        [
            {"id": "up", "audio": "../shared/x.wav"},
            {"id": "absolute", "audio": str(tmp_path / "shared" / "x.wav")},
            {"id": "inside", "audio": str(root.resolve() / "audio" / "in.wav")},  # absolute, but inside: fine
            {"id": "climbs back", "audio": "audio/../../set/audio/in.wav"},
        ],
    )
    with pytest.raises(AmrError, match=r"items\.jsonl:1: audio path '\.\./shared/x\.wav' is outside the dataset folder"):
        load_dataset(root)
    skipped: list[str] = []
    assert [item.id for item in load_dataset(root, lenient=True, on_skip=skipped.append).items] == ["inside", "climbs back"]
    assert [message.split(": ")[0].rsplit("/", 1)[1] for message in skipped] == ["items.jsonl:1", "items.jsonl:2"]
    allowed = [item.audio for item in load_dataset(root, allow_outside_root=True).items]
    outside, inside = str(tmp_path.resolve() / "shared" / "x.wav"), str(root.resolve() / "audio" / "in.wav")
    assert allowed == [outside, outside, inside, inside]


def test_clotho_file_name_outside_the_root(data: Path, tmp_path: Path) -> None:
    root = clotho_root(tmp_path / "clotho", data)
    place(root / "validation" / "02-Bakken_Rollercoaster.wav", tmp_path / "escape.wav")
    with open(root / "clotho_captions_validation.csv", "a") as f:
        f.write("../../escape.wav,a,b,c,d,e\n")
    with pytest.raises(AmrError, match=r"validation\.csv:3: audio path 'validation/\.\./\.\./escape\.wav' is outside"):
        load_dataset(root)
    assert load_dataset(root, allow_outside_root=True).items[-1].audio == str(tmp_path.resolve() / "escape.wav")


def test_a_csv_that_is_not_utf8_is_read_with_a_warning(tmp_path: Path, wav: Path, capsys: pytest.CaptureFixture[str]) -> None:
    place(wav, tmp_path / "a.wav")
    title = "Caf\u00e9 \u2019round the corner\u2019"
    path = write_lines(tmp_path / "items.csv", ["id,audio,title", f"a,a.wav,{title}"], encoding="cp1252")
    assert load_dataset(tmp_path).items[0].metadata == {"title": title}
    err = capsys.readouterr().err.replace("\n", "")
    assert f"{path.resolve()}:2: not UTF-8 (byte 0xe9); read the file as cp1252" in err and "--encoding" in err
    # named: no guess, no warning; a wrong name fails at the line
    assert load_dataset(tmp_path, encoding="cp1252").items[0].metadata == {"title": title}
    assert load_dataset(tmp_path, encoding="latin-1").items[0].metadata == {"title": title.replace("\u2019", "\x92")}
    assert capsys.readouterr().err == ""
    with pytest.raises(AmrError, match=r"items\.csv:2: not UTF-8 \(invalid continuation byte at byte 26\)"):
        load_dataset(tmp_path, encoding="utf-8")
    with pytest.raises(AmrError, match=r"items\.csv:2: neither UTF-8 nor ascii \(ordinal not in range\(128\) at byte 26\)"):
        load_dataset(tmp_path, encoding="ascii")
    with pytest.raises(AmrError, match="unknown text encoding 'klingon'"):
        load_dataset(tmp_path, encoding="klingon")


def test_a_named_encoding_is_for_files_that_are_not_utf8(tmp_path: Path, wav: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One dataset can mix them (Clotho: UTF-8 captions, Windows-1252 metadata): UTF-8 stays UTF-8."""
    place(wav, tmp_path / "a.wav")
    write_lines(tmp_path / "items.csv", ["id,audio,title", "a,a.wav,Caf\u00e9"])
    assert load_dataset(tmp_path, encoding="cp1252").items[0].metadata == {"title": "Caf\u00e9"}  # not "CafÃ©"
    assert capsys.readouterr().err == ""


def test_latin1_clotho_metadata_is_reported(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    load_dataset(clotho_root(tmp_path / "clotho", data))
    err = capsys.readouterr().err.replace("\n", "")
    assert "clotho_metadata_development.csv:2: not UTF-8 (byte 0xe9); read the file as cp1252" in err
    assert "clotho_metadata_validation.csv:2: not UTF-8 (byte 0x92); read the file as cp1252" in err
    assert "clotho_captions_" not in err  # UTF-8 files: no warning


def test_jsonl_in_a_named_encoding(tmp_path: Path, wav: Path) -> None:
    root = generic_root(tmp_path, wav, [])
    write_lines(root / "items.jsonl", ['{"id": "a", "audio": "audio/a.wav", "metadata": {"title": "caf\u00e9"}}'], encoding="utf-16")
    with pytest.raises(AmrError, match=r"items\.jsonl:1: not UTF-8"):
        load_dataset(root)
    assert load_dataset(root, encoding="utf-16").items[0].metadata == {"title": "caf\u00e9"}
    queries = write_lines(tmp_path / "queries.jsonl", ['{"id": "q", "text": "caf\u00e9", "relevant": ["a"]}'], encoding="cp1252")
    with pytest.raises(AmrError, match=r"queries\.jsonl:1: not UTF-8"):
        load_queries(queries)
    assert load_queries(queries, encoding="cp1252")[0].text == "caf\u00e9"


def test_audiocaps_segments_that_are_not_utf8(tmp_path: Path, wav: Path) -> None:
    root = audiocaps_root(tmp_path / "ac", wav)
    with open(root / "unbalanced_train_segments.csv", "ab") as f:
        f.write(b'vfY_TJq7n_U, 130.000, 140.000, "/m/01yrx" \xff\n')
    with pytest.raises(AmrError, match=r"unbalanced_train_segments\.csv: not UTF-8 \(invalid start byte\)"):
        load_dataset(root)
