"""How2Sign-layout test data, independent of the synthetic generator.

`make_how2sign_fixture` writes a folder exactly as How2Sign ships it: tab-separated
`how2sign_realigned_{split}.csv` with CRLF line endings and the seven How2Sign columns, video ids that
start with `-`, and full frontal videos `raw_videos/{VIDEO_NAME}.mp4` at 1280x720, 29.97 fps, with a
photographed face (mediapipe and dlib find it) above a moving pair of hands on a green studio backdrop.

`write_published_checkpoints` writes random-weight SignHiera / SONAR ASL encoder / SONAR text decoder
(+ text encoder) checkpoints under the published file names and layouts (`{"model"}` SignHiera with MAE
leftovers, `{"student"}` encoder, fairseq2-named `{"model"}` decoder), a SentencePiece model in the NLLB
id layout (all 202 SONAR languages; 256,000 pieces for the `sonar` preset) and `SHA256SUMS`, i.e. what a
mirror of the download site holds (with a stand-in for the demo's sample clip).
"""
from __future__ import annotations

import hashlib
import struct
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import torch

HOW2SIGN_HEADER = ("VIDEO_ID", "VIDEO_NAME", "SENTENCE_ID", "SENTENCE_NAME", "START_REALIGNED",
                   "END_REALIGNED", "SENTENCE")
FPS_2997 = Fraction(30000, 1001)
SENTENCES = [
    "Hi, today I am going to show you how to make a paper boat.",
    "First, fold the sheet in half.",
    "Then open it again and press the crease flat.",
    "Now we add a little salt to the water.",
    "Stir it slowly until it boils.",
    "You want the glue to dry before you paint it.",
    "Hold the brush at an angle like this.",
    "That's all you need to know about it.",
    "Cut the dough into four pieces.",
    "Keep your elbows close to your body.",
    "Let it rest for ten minutes.",
    "Thanks for watching, and good luck!",
]
PUBLISHED_NAMES = dict(signhiera="dm_70h_ub_signhiera.pth", encoder="dm_70h_ub_sonar_encoder.pth",
                       decoder="sonar_text_decoder.pt", tokenizer="sentencepiece.source.256000.model",
                       text_encoder="sonar_text_encoder.pt", sample_clip="0043626-2023.1.4.mp4")


def _face() -> np.ndarray:
    """The astronaut photo's head, 96x96 RGB (a real face the detectors find)."""
    from skimage import data
    return np.ascontiguousarray(data.astronaut()[60:200, 150:290])


def _frame(face: np.ndarray, size: tuple[int, int], t: float, signer_x: float, style: int) -> np.ndarray:
    """One RGB frame: green backdrop, dark torso, the face, two skin-coloured hands moving with time `t`."""
    w, h = size
    img = np.empty((h, w, 3), np.uint8)
    img[:] = (40, 170, 60)
    cx, s = int(signer_x * w), h / 720
    fh = int(face.shape[0] * 1.3 * s)
    f = cv2.resize(face, (fh, fh), interpolation=cv2.INTER_AREA)
    y0 = int(110 * s)
    cv2.rectangle(img, (cx - int(170 * s), y0 + fh), (cx + int(170 * s), h), (30, 30, 45), -1)
    img[y0:y0 + fh, cx - fh // 2:cx - fh // 2 + fh] = f
    for side in (-1, 1):
        phase = 2 * np.pi * (0.7 + 0.3 * style) * t + (side + 1) * 0.9
        hx = cx + side * int((120 + 60 * np.sin(phase)) * s)
        hy = int((430 + 90 * np.cos(phase * (1 + 0.2 * style))) * s)
        cv2.circle(img, (hx, hy), int(34 * s), (224, 172, 140), -1)
    return img


def write_how2sign_video(path: Path, seconds: float, size=(1280, 720), fps=FPS_2997, seed: int = 0,
                         crf: int = 23) -> int:
    """A full frontal How2Sign-like video; returns its frame count."""
    rng = np.random.default_rng(seed)
    face, x, style = _face(), float(rng.uniform(0.4, 0.6)), int(rng.integers(0, 3))
    n = int(round(seconds * float(fps)))
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        st = c.add_stream("libx264", rate=fps)
        st.width, st.height, st.pix_fmt = size[0], size[1], "yuv420p"
        st.options = {"crf": str(crf), "preset": "ultrafast"}
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(_frame(face, size, i / float(fps), x, style), format="rgb24")
            for pk in st.encode(frame):
                c.mux(pk)
        for pk in st.encode():
            c.mux(pk)
    return n


def make_how2sign_fixture(root: str | Path, videos: dict[str, int] | None = None, sentences_per_video: int = 2,
                          sentence_seconds: float = 2.4, gap_seconds: float = 0.5, size=(1280, 720),
                          fps=FPS_2997, seed: int = 0) -> Path:
    """How2Sign's layout: `how2sign_realigned_{split}.csv` (tabs, CRLF) + `raw_videos/{VIDEO_NAME}.mp4`."""
    root = Path(root)
    videos = videos or {"train": 3, "val": 1, "test": 2}
    rng = np.random.default_rng(seed)
    k = 0
    for split, n_videos in videos.items():
        rows = ["\t".join(HOW2SIGN_HEADER)]
        for v in range(n_videos):
            vid = f"-{split[:2]}{v}x{rng.integers(10**6):06d}"   # real ids are YouTube ids, many start with '-'
            name = f"{vid}-1-rgb_front"
            t = 0.3
            for s in range(sentences_per_video):
                text = SENTENCES[k % len(SENTENCES)]
                k += 1
                start, end = t, t + sentence_seconds + 0.3 * s
                rows.append("\t".join([vid, name, f"{vid}_{s}", f"{vid}_{s}-1-rgb_front",
                                       f"{start:.2f}", f"{end:.2f}", text]))
                t = end + gap_seconds
            write_how2sign_video(root / "raw_videos" / f"{name}.mp4", t + 0.2, size, fps, seed=k)
        (root / f"how2sign_realigned_{split}.csv").write_bytes(("\r\n".join(rows) + "\r\n").encode())
    return root


def fixture_texts(root: str | Path) -> list[str]:
    """Every SENTENCE of a fixture folder (to train its tokenizer on)."""
    out = []
    for csv in sorted(Path(root).glob("how2sign_realigned_*.csv")):
        out += [line.split("\t")[-1] for line in csv.read_text().splitlines()[1:] if line.strip()]
    return out


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def pad_sentencepiece(model: bytes, num_pieces: int) -> bytes:
    """Append dummy NORMAL pieces (score -100) to a serialized SentencePiece ModelProto up to `num_pieces`.

    Repeated protobuf fields may follow the rest of the message, so appending `pieces` (field 1) entries
    keeps the model valid and puts the new ids after the trained ones."""
    import sentencepiece as spm
    have = spm.SentencePieceProcessor(model_proto=model).get_piece_size()
    extra = bytearray()
    for i in range(num_pieces - have):
        piece = f"\u2581zz{i:06d}".encode()
        body = b"\x0a" + _varint(len(piece)) + piece + b"\x15" + struct.pack("<f", -100.0)
        extra += b"\x0a" + _varint(len(body)) + body
    return model + bytes(extra)


def write_tokenizer(path: Path, texts: list[str], num_pieces: int | None = None) -> Path:
    """A SentencePiece model in the NLLB layout, no `.langs.txt` beside it (the real file has none)."""
    from sonar_thesis.sonar import SONAR_LANGS, langs_path, train_synthetic_tokenizer
    tmp = train_synthetic_tokenizer(texts, path.parent / ".tok", vocab_size=300, langs=SONAR_LANGS, name="tok")
    data = tmp.read_bytes()
    if num_pieces:
        data = pad_sentencepiece(data, num_pieces)
    path.write_bytes(data)
    tmp.unlink()
    langs_path(tmp).unlink()
    tmp.parent.rmdir()
    return path


def sha256sum(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def write_published_checkpoints(out_dir: str | Path, preset: str = "small", texts: list[str] | None = None,
                                seed: int = 0, text_encoder: bool = True) -> dict[str, Path]:
    """Random-weight checkpoints of `preset` under the published names and layouts, + tokenizer + SHA256SUMS."""
    from sonar_thesis.checkpoints import published_state_dict
    from sonar_thesis.signhiera import build_signhiera
    from sonar_thesis.sonar import SonarTokenizer
    from sonar_thesis.assemble import build_text_encoder, build_translator
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    paths = {k: out / v for k, v in PUBLISHED_NAMES.items()}
    write_tokenizer(paths["tokenizer"], texts or SENTENCES, 256_000 if preset == "sonar" else None)
    vocab = len(SonarTokenizer(paths["tokenizer"]))

    sh = build_signhiera(preset)
    sd = published_state_dict(sh)
    dim = sd["patch_embed.proj.weight"].shape[0]
    # MAE leftovers the published loader must ignore (ssvp_slt pretraining keeps them in the file)
    sd.update({"mask_token": torch.zeros(1, 1, dim), "decoder_embed.weight": torch.randn(dim, 8 * dim) * 0.02,
               "decoder_norm.weight": torch.ones(dim), "encoder_norm.weight": torch.ones(8 * dim)})
    torch.save({"model": sd}, paths["signhiera"])
    del sh, sd
    tr = build_translator(preset, vocab)
    torch.save({"student": published_state_dict(tr.encoder)}, paths["encoder"])
    torch.save({"model": published_state_dict(tr.decoder)}, paths["decoder"])
    del tr
    if text_encoder:
        te = build_text_encoder(preset, vocab)
        torch.save({"model": published_state_dict(te)}, paths["text_encoder"])
        del te
    else:
        paths.pop("text_encoder")
    write_how2sign_video(paths["sample_clip"], 2.0, size=(640, 360), fps=30, seed=seed)   # the demo's DailyMoth clip
    (out / "SHA256SUMS").write_text("".join(f"{sha256sum(p)}  {p.name}\n" for p in paths.values()))
    return paths
