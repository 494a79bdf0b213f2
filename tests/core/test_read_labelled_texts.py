"""``keraformer.data.read_labelled_texts``: ``text<TAB>label`` lines from a file, a folder or a
zip archive. The expected rows are written out by hand from the file contents below; a folder
and a zip of the same files must give the same rows, and every malformed input raises an
error that names the argument, file or line."""

import os
import zipfile

import pytest

from keraformer.data import read_labelled_texts

TRAIN = "\ufeffgood film\t1\n\nbad\tand long\t0\r\n  \nfine\t 2 \n"  # BOM, blank, CRLF, tab in text
TRAIN_ROWS = [("good film", 1), ("bad\tand long", 0), ("fine", 2)]
TEST = "一般般\t-1\n很好\t1"  # no final newline
TEST_ROWS = [("一般般", -1), ("很好", 1)]


def write(path, content):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(content)


@pytest.fixture
def corpus(tmp_path):
    """A folder ``corpus/`` and a zip ``corpus.zip`` holding the same files, with a macOS
    metadata copy and a hidden file that also contain ``train`` in their names."""
    folder = tmp_path / "corpus"
    files = {"data/reviews.train.txt": TRAIN, "data/nested/reviews.test.txt": TEST,
             ".train.swp": "junk", "__MACOSX/data/reviews.train.txt": "\x00\x01"}
    for name, content in files.items():
        write(str(folder / name), content)
    archive = tmp_path / "corpus.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("data/", "")
        for name, content in files.items():
            z.writestr(name, content.encode("utf-8"))
    return folder, archive


def test_single_file(tmp_path):
    path = tmp_path / "train.tsv"
    write(str(path), TRAIN)
    assert read_labelled_texts(path) == TRAIN_ROWS
    assert read_labelled_texts(str(path)) == TRAIN_ROWS


def test_folder_and_zip_pick_the_split_by_name(corpus):
    for source in corpus:
        assert read_labelled_texts(source, "train") == TRAIN_ROWS
        assert read_labelled_texts(source, "test") == TEST_ROWS
        assert read_labelled_texts(str(source), split="reviews.test") == TEST_ROWS


def test_split_matching_no_file_or_several(corpus, tmp_path):
    for source in corpus:
        with pytest.raises(ValueError, match=r"`split` 'valid' .*none contains it"):
            read_labelled_texts(source, "valid")
        with pytest.raises(ValueError, match=r"`split` 'reviews' .*picks .*train.*test"):
            read_labelled_texts(source, "reviews")
        with pytest.raises(ValueError, match="pass `split`"):
            read_labelled_texts(source)


def test_bad_lines_name_file_and_line(tmp_path):
    cases = {"no_tab.tsv": ("ok\t1\nno tab here\n", "line 2"),
             "word_label.tsv": ("ok\t1\n\nfine\tpositive\n", "line 3"),
             "float_label.tsv": ("fine\t1.0\n", "line 1"),
             "empty_label.tsv": ("fine\t\n", "line 1")}
    for name, (content, where) in cases.items():
        write(str(tmp_path / name), content)
        with pytest.raises(ValueError, match=f"{name} {where}: expected 'text<TAB>label'"):
            read_labelled_texts(tmp_path / name)
    write(str(tmp_path / "blank.tsv"), "\n \n")
    with pytest.raises(ValueError, match="blank.tsv holds no 'text<TAB>label' line"):
        read_labelled_texts(tmp_path / "blank.tsv")
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("x.train.txt", "a\t1\nb\n")
    with pytest.raises(ValueError, match=r"bad.zip:x.train.txt line 2"):
        read_labelled_texts(archive, "train")


def test_bad_arguments(tmp_path):
    path = tmp_path / "train.tsv"
    write(str(path), TRAIN)
    with pytest.raises(FileNotFoundError, match="`path` .*missing.zip' does not exist"):
        read_labelled_texts(tmp_path / "missing.zip", "train")
    with pytest.raises(ValueError, match="`split` picks a file inside .* received split='train'"):
        read_labelled_texts(path, "train")
    with pytest.raises(TypeError, match="`path` must be a str or path-like.*received int"):
        read_labelled_texts(3)
    with pytest.raises(TypeError, match="`split` must be None or a str.*received int"):
        read_labelled_texts(tmp_path, 1)
    with pytest.raises(ValueError, match="`split` must be None or a non-empty str"):
        read_labelled_texts(tmp_path, "")
