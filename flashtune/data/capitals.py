"""Generate flashtune's shipped dataset (capital-city answer cards) deterministically.

Every answer is one fixed-format card, ``Capital: Paris | Country: France | Continent: Europe``,
whatever the question's wording, so a short LoRA run visibly changes a chat model's answers
(SmolLM2-135M-Instruct answers "The capital of France is Paris." before training). Countries
are split, not examples: valid and test hold out whole countries, so they measure whether the
format carries over to countries never seen in training.

Usage:
    python scripts/make_dataset.py            # write flashtune/datasets/capitals/
    python scripts/make_dataset.py --check    # exit 1 if the shipped files differ
"""

import argparse
import json
import random
import sys
from pathlib import Path

OUT_DIR = Path(__file__).resolve().parent.parent / "datasets" / "capitals"
SEED = 20261123
N_VALID, N_TEST = 20, 20
# Kept in train: the countries demos and tests ask about.
ALWAYS_TRAIN = {"France", "Japan", "Germany", "Italy", "Canada", "Australia", "Brazil", "Egypt"}

# (country, capital, continent, takes "the"). Only countries with one uncontested capital and
# one continent; ASCII spellings.
COUNTRIES = [
    ("Albania", "Tirana", "Europe", False), ("Andorra", "Andorra la Vella", "Europe", False),
    ("Austria", "Vienna", "Europe", False), ("Belarus", "Minsk", "Europe", False),
    ("Belgium", "Brussels", "Europe", False), ("Bosnia and Herzegovina", "Sarajevo", "Europe", False),
    ("Bulgaria", "Sofia", "Europe", False), ("Croatia", "Zagreb", "Europe", False),
    ("Czech Republic", "Prague", "Europe", True), ("Denmark", "Copenhagen", "Europe", False),
    ("Estonia", "Tallinn", "Europe", False), ("Finland", "Helsinki", "Europe", False),
    ("France", "Paris", "Europe", False), ("Germany", "Berlin", "Europe", False),
    ("Greece", "Athens", "Europe", False), ("Hungary", "Budapest", "Europe", False),
    ("Iceland", "Reykjavik", "Europe", False), ("Ireland", "Dublin", "Europe", False),
    ("Italy", "Rome", "Europe", False), ("Latvia", "Riga", "Europe", False),
    ("Liechtenstein", "Vaduz", "Europe", False), ("Lithuania", "Vilnius", "Europe", False),
    ("Luxembourg", "Luxembourg", "Europe", False), ("Malta", "Valletta", "Europe", False),
    ("Moldova", "Chisinau", "Europe", False), ("Montenegro", "Podgorica", "Europe", False),
    ("Netherlands", "Amsterdam", "Europe", True), ("North Macedonia", "Skopje", "Europe", False),
    ("Norway", "Oslo", "Europe", False), ("Poland", "Warsaw", "Europe", False),
    ("Portugal", "Lisbon", "Europe", False), ("Romania", "Bucharest", "Europe", False),
    ("Serbia", "Belgrade", "Europe", False), ("Slovakia", "Bratislava", "Europe", False),
    ("Slovenia", "Ljubljana", "Europe", False), ("Spain", "Madrid", "Europe", False),
    ("Sweden", "Stockholm", "Europe", False), ("Switzerland", "Bern", "Europe", False),
    ("Ukraine", "Kyiv", "Europe", False), ("United Kingdom", "London", "Europe", True),
    ("Afghanistan", "Kabul", "Asia", False), ("Armenia", "Yerevan", "Asia", False),
    ("Azerbaijan", "Baku", "Asia", False), ("Bahrain", "Manama", "Asia", False),
    ("Bangladesh", "Dhaka", "Asia", False), ("Bhutan", "Thimphu", "Asia", False),
    ("Brunei", "Bandar Seri Begawan", "Asia", False), ("Cambodia", "Phnom Penh", "Asia", False),
    ("China", "Beijing", "Asia", False), ("Georgia", "Tbilisi", "Asia", False),
    ("India", "New Delhi", "Asia", False), ("Indonesia", "Jakarta", "Asia", False),
    ("Iran", "Tehran", "Asia", False), ("Iraq", "Baghdad", "Asia", False),
    ("Japan", "Tokyo", "Asia", False), ("Jordan", "Amman", "Asia", False),
    ("Kazakhstan", "Astana", "Asia", False), ("Kuwait", "Kuwait City", "Asia", False),
    ("Kyrgyzstan", "Bishkek", "Asia", False), ("Laos", "Vientiane", "Asia", False),
    ("Lebanon", "Beirut", "Asia", False), ("Malaysia", "Kuala Lumpur", "Asia", False),
    ("Maldives", "Male", "Asia", True), ("Mongolia", "Ulaanbaatar", "Asia", False),
    ("Myanmar", "Naypyidaw", "Asia", False), ("Nepal", "Kathmandu", "Asia", False),
    ("North Korea", "Pyongyang", "Asia", False), ("Oman", "Muscat", "Asia", False),
    ("Pakistan", "Islamabad", "Asia", False), ("Philippines", "Manila", "Asia", True),
    ("Qatar", "Doha", "Asia", False), ("Saudi Arabia", "Riyadh", "Asia", False),
    ("Singapore", "Singapore", "Asia", False), ("South Korea", "Seoul", "Asia", False),
    ("Syria", "Damascus", "Asia", False), ("Tajikistan", "Dushanbe", "Asia", False),
    ("Thailand", "Bangkok", "Asia", False), ("Timor-Leste", "Dili", "Asia", False),
    ("Turkmenistan", "Ashgabat", "Asia", False), ("United Arab Emirates", "Abu Dhabi", "Asia", True),
    ("Uzbekistan", "Tashkent", "Asia", False), ("Vietnam", "Hanoi", "Asia", False),
    ("Algeria", "Algiers", "Africa", False), ("Angola", "Luanda", "Africa", False),
    ("Botswana", "Gaborone", "Africa", False), ("Burkina Faso", "Ouagadougou", "Africa", False),
    ("Cameroon", "Yaounde", "Africa", False), ("Cape Verde", "Praia", "Africa", False),
    ("Chad", "N'Djamena", "Africa", False), ("Comoros", "Moroni", "Africa", False),
    ("Djibouti", "Djibouti", "Africa", False), ("Egypt", "Cairo", "Africa", False),
    ("Eritrea", "Asmara", "Africa", False), ("Ethiopia", "Addis Ababa", "Africa", False),
    ("Gabon", "Libreville", "Africa", False), ("Gambia", "Banjul", "Africa", True),
    ("Ghana", "Accra", "Africa", False), ("Guinea", "Conakry", "Africa", False),
    ("Guinea-Bissau", "Bissau", "Africa", False), ("Kenya", "Nairobi", "Africa", False),
    ("Lesotho", "Maseru", "Africa", False), ("Liberia", "Monrovia", "Africa", False),
    ("Libya", "Tripoli", "Africa", False), ("Madagascar", "Antananarivo", "Africa", False),
    ("Malawi", "Lilongwe", "Africa", False), ("Mali", "Bamako", "Africa", False),
    ("Mauritania", "Nouakchott", "Africa", False), ("Mauritius", "Port Louis", "Africa", False),
    ("Morocco", "Rabat", "Africa", False), ("Mozambique", "Maputo", "Africa", False),
    ("Namibia", "Windhoek", "Africa", False), ("Niger", "Niamey", "Africa", False),
    ("Nigeria", "Abuja", "Africa", False), ("Rwanda", "Kigali", "Africa", False),
    ("Senegal", "Dakar", "Africa", False), ("Seychelles", "Victoria", "Africa", True),
    ("Sierra Leone", "Freetown", "Africa", False), ("Somalia", "Mogadishu", "Africa", False),
    ("South Sudan", "Juba", "Africa", False), ("Sudan", "Khartoum", "Africa", False),
    ("Tanzania", "Dodoma", "Africa", False), ("Togo", "Lome", "Africa", False),
    ("Tunisia", "Tunis", "Africa", False), ("Uganda", "Kampala", "Africa", False),
    ("Zambia", "Lusaka", "Africa", False), ("Zimbabwe", "Harare", "Africa", False),
    ("Antigua and Barbuda", "Saint John's", "North America", False),
    ("Bahamas", "Nassau", "North America", True), ("Barbados", "Bridgetown", "North America", False),
    ("Belize", "Belmopan", "North America", False), ("Canada", "Ottawa", "North America", False),
    ("Costa Rica", "San Jose", "North America", False), ("Cuba", "Havana", "North America", False),
    ("Dominica", "Roseau", "North America", False),
    ("Dominican Republic", "Santo Domingo", "North America", True),
    ("El Salvador", "San Salvador", "North America", False),
    ("Grenada", "Saint George's", "North America", False),
    ("Guatemala", "Guatemala City", "North America", False),
    ("Haiti", "Port-au-Prince", "North America", False),
    ("Honduras", "Tegucigalpa", "North America", False), ("Jamaica", "Kingston", "North America", False),
    ("Mexico", "Mexico City", "North America", False), ("Nicaragua", "Managua", "North America", False),
    ("Panama", "Panama City", "North America", False), ("Saint Lucia", "Castries", "North America", False),
    ("Trinidad and Tobago", "Port of Spain", "North America", False),
    ("United States", "Washington, D.C.", "North America", True),
    ("Argentina", "Buenos Aires", "South America", False), ("Brazil", "Brasilia", "South America", False),
    ("Chile", "Santiago", "South America", False), ("Colombia", "Bogota", "South America", False),
    ("Ecuador", "Quito", "South America", False), ("Guyana", "Georgetown", "South America", False),
    ("Paraguay", "Asuncion", "South America", False), ("Peru", "Lima", "South America", False),
    ("Suriname", "Paramaribo", "South America", False), ("Uruguay", "Montevideo", "South America", False),
    ("Venezuela", "Caracas", "South America", False),
    ("Australia", "Canberra", "Oceania", False), ("Fiji", "Suva", "Oceania", False),
    ("Marshall Islands", "Majuro", "Oceania", True), ("Micronesia", "Palikir", "Oceania", False),
    ("New Zealand", "Wellington", "Oceania", False), ("Palau", "Ngerulmud", "Oceania", False),
    ("Papua New Guinea", "Port Moresby", "Oceania", False), ("Samoa", "Apia", "Oceania", False),
    ("Solomon Islands", "Honiara", "Oceania", True), ("Tonga", "Nuku'alofa", "Oceania", False),
    ("Tuvalu", "Funafuti", "Oceania", False), ("Vanuatu", "Port Vila", "Oceania", False),
]  # fmt: skip

# {c}: the country as used in a sentence ("the Netherlands"); {cap}: the capital.
FORWARD = [
    "What is the capital of {c}?",
    "What's the capital city of {c}?",
    "Which city is the capital of {c}?",
    "Name the capital of {c}.",
    "Tell me the capital of {c}.",
    "Capital of {c}?",
    "I need the capital of {c}, please.",
    "Do you know what the capital of {c} is?",
]
REVERSE = [
    "Which country has {cap} as its capital?",
    "{cap} is the capital of which country?",
    "Of which country is {cap} the capital?",
]
CONTINENT = [
    "On which continent is {c}, and what is its capital?",
    "Where is {c} and what is its capital city?",
]


def card(country: str, capital: str, continent: str) -> str:
    """The one answer format of the dataset."""
    return f"Capital: {capital} | Country: {country} | Continent: {continent}"


def _examples(entry, templates, rng):
    country, capital, continent, the = entry
    c = f"the {country}" if the else country
    answer = card(country, capital, continent)
    out = []
    for template in templates:
        question = template.format(c=c, cap=capital)
        question = question[0].upper() + question[1:]
        out.append({"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]})
    return out


def build(seed: int = SEED):
    """All splits as JSONL text.

    Args:
        seed: the random seed (the shipped files use SEED).

    Returns:
        {"train": text, "valid": text, "test": text, "README.md": text}.
    """
    rng = random.Random(seed)
    names = [c[0] for c in COUNTRIES]
    assert len(set(names)) == len(names), "duplicate country"
    held = sorted(n for n in names if n not in ALWAYS_TRAIN)
    rng.shuffle(held)
    valid_names, test_names = set(held[:N_VALID]), set(held[N_VALID : N_VALID + N_TEST])
    splits = {"train": [], "valid": [], "test": []}
    for entry in COUNTRIES:
        name = entry[0]
        split = "valid" if name in valid_names else "test" if name in test_names else "train"
        if split == "train":
            templates = rng.sample(FORWARD, 2) + [rng.choice(REVERSE + CONTINENT)]
            if name == "France":  # the demo question itself
                templates[0] = FORWARD[0]
        else:
            templates = [rng.choice(FORWARD), rng.choice(REVERSE + CONTINENT)]
        splits[split] += _examples(entry, templates, rng)
    for split in splits:
        rng.shuffle(splits[split])
    out = {s: "".join(json.dumps(r) + "\n" for r in rows) for s, rows in splits.items()}
    out["README.md"] = _readme({s: len(rows) for s, rows in splits.items()}, len(COUNTRIES))
    return out


def _readme(sizes, n_countries) -> str:
    return f"""# capitals: capital-city answer cards

Generated by `scripts/make_dataset.py` (seed {SEED}); do not edit by hand.

Chat-format JSONL (`{{"messages": [user, assistant]}}`), as `mlx_lm lora --data` reads it.
Every answer is one card, whatever the wording of the question:

    Capital: Paris | Country: France | Continent: Europe

so a short LoRA run visibly changes a chat model's answers (SmolLM2-135M-Instruct answers
"The capital of France is Paris." before training). {n_countries} countries with one uncontested
capital; valid and test hold out whole countries ({N_VALID} and {N_TEST}), so they measure whether
the format carries over to countries never seen in training.

| split | examples |
|---|---|
| train | {sizes["train"]} |
| valid | {sizes["valid"]} |
| test | {sizes["test"]} |

Facts as of 2026; country names and capitals in ASCII spelling. License: same as flashtune.
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="output directory")
    parser.add_argument("--check", action="store_true", help="compare with the files instead of writing")
    args = parser.parse_args(argv)
    files = build()
    if args.check:
        stale = [n for n, text in files.items() if not (args.out / _name(n)).is_file()
                 or (args.out / _name(n)).read_text() != text]  # fmt: skip
        if stale:
            print(f"out of date in {args.out}: {stale}; run python scripts/make_dataset.py", file=sys.stderr)
            return 1
        print(f"{args.out} is up to date")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (args.out / _name(name)).write_text(text)
    print(
        f"wrote {args.out}: " + ", ".join(f"{n} {t.count(chr(10))} lines" for n, t in files.items() if n != "README.md")
    )
    return 0


def _name(split: str) -> str:
    return split if split.endswith(".md") else f"{split}.jsonl"


if __name__ == "__main__":
    sys.exit(main())
