"""Zero-shot UCS categorisation (`amr categorize`) on hand-labelled shared clips.

The sfx-dev clips have human titles ("footstep on gravel", "rooster") but no
UCS category. LABELS below is a table made by hand, title by title, of the
titles whose UCS 8.2.1 CatID is clear from the title and the list's
explanations (a title that fits several CatIDs equally — "train", "typing",
"scrape", "camel" — is left out). Every sfx-dev clip with such a title is
scored; nothing else is.

For each source (audio only, metadata only, fused) it prints the top-1
Category accuracy (the suggestion's Category, e.g. ANIMALS, is the label's)
and the top-3 CatID accuracy (the label's CatID among the three suggestions),
beside chance (a Category drawn uniformly: 1/82; three CatIDs drawn: 3/752).
The metadata here is the title the label was read from, so "metadata only"
measures how well the text encoder matches a name to the list, not an
independent source; the audio row is the one that says what the files alone
give.

    python bench/ucs.py [--work DIR] [--limit N]

The first run extracts the labelled clips (under a minute on 2 cores); later
runs reuse the cache in --work (default amr-workspace/bench-ucs).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from amr.audio.weights import resolve_weights  # noqa: E402
from amr.categorize import UcsScorer, categorize  # noqa: E402
from amr.config import CategorizeSource  # noqa: E402
from amr.datasets import load_dataset  # noqa: E402
from amr.extraction import extract  # noqa: E402
from amr.ucs import categories  # noqa: E402

SHARED = Path(os.environ.get("AMR_SHARED") or REPO.parent / "shared")

# CatID → the sfx-dev titles it labels (hand-made; see the module docstring).
LABELS: dict[str, tuple[str, ...]] = {
    "ANMLDog": ("dog", "dog bark", "puppy bark"),
    "ANMLCat": ("cat", "cat meow", "meow", "kitten", "blackcat"),
    "ANMLFarm": ("cow", "cow moo", "cow white", "calf", "bull", "sheep", "sheep baa", "sheep lamb", "lamb", "goat", "goat bleat", "pig"),
    "ANMLHors": ("horse", "horse neigh", "horse snort", "foal"),
    "FEETHors": ("gallop", "horse gallop"),
    "BIRDFowl": ("chicken", "hen", "rooster", "duck", "duck quack", "goose", "turkey", "turkey gobble", "drake", "gander", "quail"),
    "BIRDCrow": ("crow", "crow caw"),
    "BIRDPrey": ("owl", "owl hoot", "eagle owl", "vulture"),
    "BIRDSea": ("seagull", "seagulls", "albatross", "pelican"),
    "BIRDSong": ("canary", "sparrow", "blackbird", "lark"),
    "BIRDTrop": ("parrot", "parrot chirp", "parrot whistle", "toucan", "tucan", "quetzal"),
    "BIRDWade": ("heron", "stork", "flamingo"),
    "ANMLInsc": ("cicada", "cricket", "crickets", "grasshopper", "bee", "bees", "bumble bee", "hornet", "wasp"),
    "ANMLWcat": ("lion", "lion bellow", "tiger", "tiger roar", "tiger snarl", "leopard growl", "leopard roar", "leopard snarl", "jaguar"),
    "ANMLWdog": ("wolf", "wolf howl", "wolf snarl", "coyote howl", "fox", "hyena"),
    "ANMLPrim": ("chimp", "chimpanzee", "gorilla", "gorilla grunt", "gorilla roar", "gorilla snarl", "little monkey"),
    "ANMLRdnt": ("mouse", "hamster", "squirrel", "chinchilla", "beaver", "porcupine"),
    "ANMLRept": ("cobra", "python", "iguana", "snake rattle"),
    "ANMLAmph": ("frog", "newt"),
    "ANMLAqua": ("dolphin", "dolphin chirp", "dolphin click", "whale", "orca", "sea lion"),
    "ANMLWild": ("bear", "elephant", "elephant trumpet", "giraffe", "zebra", "hippopotamus", "rhinoceros", "moose", "bison", "deer"),
    "VOXBaby": ("crying baby", "baby cry"),
    "HMNCough": ("cough female", "cough male", "coughing"),
    "HMNSneez": ("sneeze female", "sneeze male"),
    "HMNVomit": ("vomit",),
    "VOXLaff": ("laugh female", "laugh male"),
    "VOXScrm": ("scream female", "scream male"),
    "FIRECrkl": ("fire crackle", "fire crackling", "small fire crackling"),
    "FIREBurn": ("fire", "large fire roaring", "furnace fire burning"),
    "FIREIgn": ("match ignite",),
    "EXPLReal": ("explosion", "explosion distant"),
    "THUN": ("thunder",),
    "WIND": ("wind",),
    "RAIN": ("rain", "rain heavy", "rain medium"),
    "WATRFlow": ("flowing water", "water running"),
    "GEOLava": ("bubbling lava", "lava cool", "lava cooling with a hiss"),
    "DOORWood": ("wooden door closing", "wooden door opening", "door close", "door closing", "door open", "door opening"),
    "DOORCreak": ("door creak",),
    "DOORKnck": ("door knock",),
    "BELLDoor": ("doorbell",),
    "DOORMetl": ("steel door closing", "steel door opening"),
    "DOORGlas": ("glass door closing", "glass door opening"),
    "DOORGate": ("fence gate closing", "fence gate opening"),
    "GLASBrk": ("glass breaking",),
    "FEETHmn": (
        "footstep in snow",
        "footstep on dirt",
        "footstep on glass",
        "footstep on grass",
        "footstep on gravel",
        "footstep on hard floor",
        "footstep on ice",
        "footstep on metal",
        "footstep on sand",
        "footstep on wood",
        "footsteps",
    ),
    "GUNPis": ("pistol fire",),
    "GUNRif": ("rifle fire", "rifle small fire"),
    "GUNMech": ("pistol cock", "rifle cock", "pistol reload", "shotgun pump"),
    "BLLTRico": ("ricochet",),
    "AEROHeli": ("helicopter",),
    "AEROJet": ("jet", "jet flyby", "jet land"),
    "AEROProp": ("airplane prop", "turboprop"),
    "VEHMoto": ("motorbike idle", "motorcycle passing"),
    "VEHHorn": ("vehicle horn",),
    "VEHSkid": ("tires screech asphalt", "tires screech gravel oneshot"),
    "MUSCKeyd": ("piano", "grand piano"),
    "MUSCStr": ("violin", "cello"),
    "MUSCPluck": ("guitar", "guitar strum", "electric guitar", "ukulele", "harp"),
    "MUSCBrass": ("trumpet",),
    "MUSCWind": ("flute", "clarinet", "oboe", "bassoon", "saxophone"),
    "MUSCPerc": ("drums", "drumkit", "bass drum", "timpani"),
    "MUSCTnprc": ("xylophone",),
    "CLOCKTick": ("clock tick", "watch tick"),
    "OBJZipr": ("zipper",),
    "OBJKey": ("keys",),
    "MACHAppl": ("vacuum cleaner", "washing machine"),
    "COMTran": ("walkie talkie",),
}
TITLE_TO_CATID = {title: catid for catid, titles in LABELS.items() for title in titles}


def labelled_clips(work: Path, limit: int | None) -> tuple[Path, dict[str, str]]:
    """The cache of the labelled sfx-dev clips (the first ``limit`` of them; extracted on the first run) and id → CatID."""
    items = [item for item in load_dataset(SHARED / "data" / "sfx-dev").items if item.metadata.get("title") in TITLE_TO_CATID][:limit]
    labels = {item.id: TITLE_TO_CATID[str(item.metadata["title"])] for item in items}
    cache = work / f"sfx-dev-labelled{'' if limit is None else f'-{limit}'}.mn04_as.h5"
    if not cache.exists():
        work.mkdir(parents=True, exist_ok=True)
        weights = resolve_weights("mn04_as", SHARED / "weights" / "mn04_as_mAP_432.pt")
        report = extract(items, cache, weights, workers=2, progress=True)
        if report.failures:
            raise SystemExit(f"extraction failed: {report.failures}")
    return cache, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=REPO / "amr-workspace" / "bench-ucs")
    parser.add_argument("--limit", type=int, default=None, help="Only the first N labelled clips (a quick check).")
    args = parser.parse_args()
    unknown = sorted(set(LABELS) - set(categories()))
    if unknown:
        raise SystemExit(f"not UCS {unknown}")
    cache, labels = labelled_clips(args.work, args.limit)
    scorer = UcsScorer()
    entries = categories()
    used = sorted(set(labels.values()))
    print(f"{len(labels)} hand-labelled sfx-dev clips, {len(used)} CatIDs, {len({entries[c].category for c in used})} Categories")
    print(f"{'source':<16}{'top-1 Category %':>18}{'top-3 CatID %':>15}")
    for source in (CategorizeSource.audio, CategorizeSource.metadata, CategorizeSource.fused):
        results = list(categorize(cache, 3, source, scorer))
        category_hits = sum(
            bool(r.suggestions) and entries[r.suggestions[0].catid].category == entries[labels[r.id]].category for r in results
        )
        catid_hits = sum(labels[r.id] in [s.catid for s in r.suggestions] for r in results)
        name = "fused" if source is CategorizeSource.fused else f"{source.value} only"
        print(f"{name:<16}{100 * category_hits / len(results):>18.1f}{100 * catid_hits / len(results):>15.1f}")
    categories_count = len({entry.category for entry in entries.values()})
    print(f"{'chance':<16}{100 / categories_count:>18.1f}{100 * 3 / len(entries):>15.1f}")


if __name__ == "__main__":
    main()
