"""Deterministic text corpus for tokenizer tests and benchmarks.

Nothing is downloaded: every text is built from the word lists below with a seeded
``random.Random``, so the same call always returns the same list.

* ``captions(n, seed)``: realistic image captions and alt texts of varied length
  (mostly English, with product titles, numbers, HTML entities, typographic quotes,
  accents, other scripts and emoji in realistic proportions).
* ``edge_texts()``: hand-written and systematically generated hard cases (every
  ASCII/C1 control character, HTML entities incl. double-escaped ones, mojibake,
  zero-width and exotic whitespace, ligatures, fullwidth forms, combining marks,
  case-folding oddities, emoji ZWJ sequences, very long texts, ...).
* ``corpus()``: both together (several thousand lines).
"""

from __future__ import annotations

import random

# ---------------------------------------------------------------------------
# Word lists
# ---------------------------------------------------------------------------

NOUNS = """
cat dog puppy kitten horse bird parrot eagle owl fish shark whale dolphin turtle frog
lion tiger bear panda fox wolf deer rabbit squirrel mouse elephant giraffe zebra monkey
man woman child boy girl baby family couple crowd team player chef doctor teacher
student farmer soldier artist musician dancer surfer skier cyclist runner tourist
car truck bus train bicycle motorcycle boat ship airplane helicopter rocket tractor
house building skyscraper bridge tower castle church temple street road highway city
village beach ocean sea lake river waterfall mountain hill forest desert island sky
sunset sunrise cloud rain snow storm rainbow moon star galaxy garden park field farm
table chair sofa bed lamp window door kitchen bathroom bedroom office library museum
pizza burger sandwich salad soup cake cookie bread coffee tea wine beer juice apple
banana orange strawberry tomato potato carrot broccoli cheese chocolate sushi taco
phone laptop computer keyboard camera television watch clock book newspaper guitar
piano violin drum umbrella backpack bag shoe hat shirt dress jacket jeans scarf ring
necklace bottle cup glass plate bowl fork knife spoon vase flower rose tulip tree leaf
painting drawing sketch illustration poster logo icon pattern texture wallpaper map
""".split()

ADJECTIVES = """
red blue green yellow orange purple pink black white gray brown golden silver colorful
big small tiny huge tall short long wide narrow old new young ancient modern vintage
beautiful cute ugly happy sad angry sleepy funny scary calm busy empty crowded quiet
wooden metal plastic glass stone leather wool cotton paper ceramic wet dry hot cold
sunny cloudy foggy snowy rainy dark bright shiny dusty rusty clean dirty fresh ripe
abstract realistic minimalist detailed blurry sharp cinematic dramatic vibrant pastel
""".split()

VERBS = """
sitting standing running walking jumping flying swimming sleeping eating drinking
playing reading writing cooking riding driving climbing dancing singing smiling
laughing looking holding carrying throwing catching waiting resting lying posing
""".split()

PLACES = """
on a table|in a field|on the beach|in the kitchen|at the park|in a forest|on a street|
in front of a building|under a tree|next to a car|on a bed|in the snow|at night|
in the rain|by the river|on top of a mountain|in a living room|at a market|
in a studio|on a wooden floor|against a white background|in the city|at sunset
""".replace("\n", "").split("|")

BRANDS = """
Acme Zentrix Norvale Kappa&Co Lumina Brightway Oakhurst Velora Tamsin Quorix Halden
Pinecrest Sorrento Marlowe Kestrel Nimbus Orion Aurora Cobalt Vantage
""".split()

PRODUCTS = """
Sneakers|Running Shoes|Leather Handbag|Wireless Headphones|Coffee Maker|Desk Lamp|
Yoga Mat|Water Bottle|Phone Case|Backpack|Sunglasses|Wall Clock|Throw Pillow|
Area Rug|Ceramic Mug|Notebook|T-Shirt|Hoodie|Dress|Watch|Necklace|Earrings|Candle
""".replace("\n", "").split("|")

SYLLABLES = "ka lo mi ra ten vor sil qu ex tan bri dor zel po fa nu gri hal mor pel vin".split()

ACCENTED = """
café crème brûlée naïve façade déjà vu résumé über Straße Müller Köln Zürich
señor niño mañana España São Paulo João coração ação Kraków Łódź Gdańsk żółć
Ærø Ålesund Øresund İstanbul ığdır şişli Dvořák Škoda Brno Reykjavík Þórsmörk
""".split()

SENTENCES_INTL = [
    "Un chat noir assis sur le rebord de la fenêtre.",
    "Ein großer Hund läuft über die grüne Wiese.",
    "Una mujer con un sombrero rojo camina por la playa.",
    "Uma criança brincando com um cachorro no parque.",
    "Un gatto che dorme sul divano del soggiorno.",
    "Een fiets tegen een muur in Amsterdam.",
    "Kot śpiący na parapecie w słoneczny dzień.",
    "Köpek bahçede top oynuyor, İstanbul'da güneşli bir gün.",
    "Μια γάτα κάθεται σε ένα τραπέζι.",
    "Кошка сидит на подоконнике и смотрит на улицу.",
    "Собака бежит по снегу в зимнем лесу.",
    "Кіт спить на дивані.",
    "قطة تجلس على الطاولة بجانب النافذة",
    "رجل يركب دراجة في الشارع",
    "חתול יושב על השולחן",
    "एक बिल्ली मेज़ पर बैठी है।",
    "सूर्यास्त के समय समुद्र तट पर लोग",
    "একটি বিড়াল জানালার পাশে বসে আছে",
    "แมวนั่งอยู่บนโต๊ะ",
    "Một con mèo đang ngồi trên bàn.",
    "桌子上坐着一只猫。",
    "一只狗在公园里跑步",
    "夕焼けの海辺を歩く人々",
    "猫がソファの上で寝ている",
    "東京タワーと富士山の写真",
    "고양이가 탁자 위에 앉아 있다",
    "서울의 밤거리 풍경",
    "Ang pusa ay nakaupo sa mesa.",
    "Paka ameketi juu ya meza.",
    "Kissa istuu pöydällä.",
    "Egy macska ül az asztalon.",
    "ფისო ზის მაგიდაზე",
    "Կատուն նստած է սեղանին",
    "ពន្លឺថ្ងៃលិចនៅលើសមុទ្រ",
    "ማሳያ ጽሑፍ በአማርኛ",
]

EMOJI = [
    "😀", "😂", "🥰", "😍", "🔥", "✨", "🎉", "❤️", "❤", "💯", "👍", "👍🏽", "👍🏿", "🙏🏻",
    "👨‍👩‍👧‍👦", "👩🏽‍💻", "🧑‍🚀", "🏳️‍🌈", "🏴‍☠️", "👁️‍🗨️", "🇯🇵", "🇺🇸", "🇫🇷", "🏴󠁧󠁢󠁷󠁬󠁳󠁿",
    "1️⃣", "#️⃣", "©️", "™", "🐱", "🐶", "🌅", "🍕", "☕", "🚲", "⚽", "🎸", "📷", "🌈",
]

ENTITIES = [
    "&amp;", "&lt;", "&gt;", "&quot;", "&#39;", "&#x27;", "&apos;", "&nbsp;", "&eacute;",
    "&Eacute;", "&EACUTE;", "&hellip;", "&mdash;", "&ndash;", "&rsquo;", "&lsquo;",
    "&ldquo;", "&rdquo;", "&copy;", "&reg;", "&trade;", "&euro;", "&pound;", "&deg;",
    "&frac12;", "&times;", "&amp;amp;", "&amp;lt;", "&amp;#39;", "&amp;amp;amp;",
    "&amp;quot;", "&#8217;", "&#x2019;", "&#8230;", "&#128512;", "&#x1F600;", "&#0;",
    "&#1;", "&#9;", "&#10;", "&#13;", "&#128;", "&#x80;", "&#150;", "&#x9F;", "&#55357;",
    "&#xD83D;", "&#1114111;", "&#1114112;", "&#99999999;", "&amp", "&lt", "&copy",
    "&notit;", "&not", "&ne;", "&Jscr;", "&HilbertSpace;", "&checkmark;", "&SZLIG;",
    "&nTILDE;", "&NTILDE;", "&foo;", "&;", "&#;", "&#x;", "& amp;", "&&amp;",
    "&AMP;", "&LT;", "&Amp;", "&#X41;", "&#65", "&#x41", "&zwj;", "&shy;", "&NewLine;",
    "&Tab;", "&nbsp", "&ampamp;", "&amp;nbsp;", "&amp;#x27;", "&#38;amp;", "&#38;#38;",
]

MOJIBAKE_SOURCES = [
    "café", "naïve", "résumé", "São Paulo", "über", "Müller", "Ærø", "crème brûlée",
    "don’t", "“quoted”", "it’s", "—", "–", "…", "€100", "™", "©", "½", "°C",
    "✔ No problems", "¯\\_(ツ)_/¯", "日本", "😀", "🇯🇵", "Łódź", "ça va", "à la carte",
    "voilà le travail", "Кошка", "Ελλάδα", "ğüşıöç",
]
MOJIBAKE_LITERALS = [
    "cafÃ©", "â€™", "Ã©tÃ©", "â€œhelloâ€\x9d", "â€œhelloâ€�", "Ã¼ber", "MÃ¼ller",
    "voilÃ le travail", "voilÃ\xa0le travail", "Ã ", "Ã\xa0", "â€”", "â€“", "â€¦",
    "Ã¢â‚¬â„¢", "ÃƒÂ©", "sÃ³", "Ã³", "âœ” No problems", "&macr;\\_(ã\x83\x84)_/&macr;",
    "Ð¡Ð¾Ð±Ð°ÐºÐ°", "ÐšÐ¾ÑˆÐºÐ°", "æ—¥æœ¬", "ðŸ˜€", "ðŸ‘", "Ã¶", "Ã\x83Â©", "\x93quoted\x94",
    "\x85", "caf\x82", "BUNDESSTRA&SZLIG;E", "P&EACUTE;REZ", "Ã\x9f", "â\x80\x99",
]

CONTRACTIONS = [
    "don't", "DON'T", "I'LL", "i'll", "we're", "WE'RE", "they've", "I'M", "he'd", "it's",
    "IT'S", "can't", "won't", "y'all", "'s", "'S", "'t", "'re", "'ve", "'m", "'ll", "'d",
    "o'clock", "rock 'n' roll", "’s", "don’t", "'ſ", "'ß", "'K", "'İ", "''s", "'''",
    "'sss", "'llama", "'dog", "'vegas", "'mm", "'tis",
]

PUNCT = [
    "!!!", "???", "?!", "...", "…", "--", "---", "***", "###", "@@", "$$$", "%%", "^^",
    "~~~", "(^_^)", "¯\\_(ツ)_/¯", "<3", ":-)", ";)", ":D", "==>", "<==", "|||", "//",
    "\\\\", "[]", "{}", "()", "<>", "+-", "±", "§", "¶", "•", "·", "«»", "„“", "‹›",
    "、", "。", "「」", "『』", "（）", "，", "！", "？", "：", "；", "—", "–", "―", "‒",
]

NUMBERS = [
    "0", "7", "42", "1999", "2024", "1,234", "1,234,567.89", "3.14159", "-12", "+7",
    "1e10", "0x1F", "50%", "$19.99", "€20", "£5", "¥1000", "10km", "5'11\"", "6ft",
    "12:30", "2024-01-15", "15/01/2024", "1st", "2nd", "3rd", "4th", "100k", "4K",
    "1080p", "v2.0.1", "iPhone15", "٠١٢٣٤٥٦٧٨٩", "०१२३४५६७८९", "০১২৩", "๑๒๓", "一二三",
    "①②③", "½", "¼", "¾", "²", "³", "⁴", "₂", "Ⅻ", "ⅻ", "𝟙𝟚𝟛", "١٢٣", "٫", "𝟎",
]

URLS = [
    "https://www.example.com/path/to/page?query=1&b=2#frag",
    "https://example.com/?a=1&amp;b=2",
    "http://example.org/images/cat_photo-01.jpg",
    "www.example.co.uk/shop/item/12345",
    "ftp://files.example.net/pub/README.txt",
    "mailto:someone@example.com",
    "user.name+tag@sub.example.com",
    "https://例え.jp/パス",
    "https://xn--r8jz45g.jp/",
    "#hashtag #ThrowbackThursday @username",
    "C:\\Users\\Public\\Pictures\\photo.png",
    "/usr/local/bin/python3",
]

WHITESPACE = [
    " ", "  ", "\t", "\n", "\r", "\r\n", "\n\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e",
    "\x1f", "\x85", "\xa0", "\u1680", "\u180e", "\u2000", "\u2002", "\u2003", "\u2009",
    "\u200a", "\u200b", "\u200c", "\u200d", "\u2028", "\u2029", "\u202f", "\u205f",
    "\u2060", "\u3000", "\ufeff", "\u00ad", "\u034f", "\u061c", "\u200e", "\u200f",
    "\u202a", "\u202e", "\u2066", "\u2069", "\u206a", "\u206f", "\ufff9", "\ufffb",
    "\ufffc", "\ufffd",
]

ODD_CHARS = [
    "ﬁ", "ﬂ", "ﬀ", "ﬃ", "ﬆ", "Ĳ", "ĳ", "ŉ", "Ǆ", "ǅ", "ǆ", "Ｌ", "ＯＵＤ", "ｶﾀｶﾅ", "ﾟ",
    "Ｕﾀｰﾝ", "e\u0301", "a\u0308", "n\u0303", "A\u030a", "\u0301", "\u0308x", "Å", "Å",
    "ſ", "ß", "ẞ", "İ", "ı", "K", "Å", "Ω", "ς", "σ", "Σ", "ﬅ", "ǰ", "ΐ", "ᾳ", "ﬓ",
    "ǅ", "Ǉ", "ǈ", "ǉ", "ꭰ", "Ꭰ", "𝐀𝐁𝐂", "𝔄𝔅", "ℌ", "ℍ", "ℕ", "Ⓐ", "ⓐ", "㎏", "㍿",
    "\u02bc", "\u2018", "\u2019", "\u201a", "\u201b", "\u201c", "\u201d", "\u201e",
    "\u201f", "\u2032", "\u00b4", "`", "\ud83d\ude00", "\ud83d", "\ude00", "\udc80",
    "\U0001d173", "\U000e0067", "\U0010ffff", "\U000f0000", "\ue000", "\uffff",
    "\x00", "\x7f", "\x1b", "\x1b[31m", "\x1b[0m", "\x1b[1;32;40m", "\x1b]0;title\x07",
    "\u0e33", "\u0ec0", "각", "\u1100\u1161", "\u1100\u1161\u11a8", "가\u11a8",
    "\u0915\u093c", "\u0958", "\u2126", "\u212b", "\u2000", "\u0340", "\u0f73", "\uafff",
    "<|startoftext|>", "<|endoftext|>", "<start_of_text>", "<end_of_text>", "</w>",
    "<|ENDOFTEXT|>", "<END_OF_TEXT>", "<b>bold</b>", "<br/>", "<", ">",
]

# ---------------------------------------------------------------------------
# Realistic captions
# ---------------------------------------------------------------------------


def _pseudo_word(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4)))


def _english_caption(rng: random.Random) -> str:
    n, a, a2 = rng.choice(NOUNS), rng.choice(ADJECTIVES), rng.choice(ADJECTIVES)
    v, p = rng.choice(VERBS), rng.choice(PLACES)
    n2 = rng.choice(NOUNS)
    templates = [
        f"a photo of a {a} {n}",
        f"A {a} {n} {v} {p}.",
        f"a {a} {n} and a {a2} {n2} {p}",
        f"Close-up of a {n}'s face, {a} lighting",
        f"{a.capitalize()} {n} {v} {p} with a {n2} in the background",
        f"an illustration of a {a} {n}, digital art, trending on artstation",
        f"Two {n}s {v} {p}",
        f"{n.upper()} {n2.upper()} - {a} edition",
        f"image may contain: {n}, {n2}, {a2} {rng.choice(NOUNS)}",
        f"{rng.randint(1, 12)} {a} {n}s for sale",
        f"{n} {v} {p} ({rng.randint(1990, 2024)})",
        f"Stock photo: {a} {n} isolated on white",
    ]
    s = rng.choice(templates)
    # Occasionally extend into a longer description.
    for _ in range(rng.choice([0, 0, 0, 1, 1, 2, 4])):
        s += rng.choice([", ", ". ", " and ", " with ", "; "])
        s += (f"{rng.choice(['the', 'a', 'some', 'two', 'many'])} {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} "
              f"{rng.choice(VERBS)} {rng.choice(PLACES)}")
    if rng.random() < 0.15:
        s += " " + _pseudo_word(rng)
    return s


def _product_title(rng: random.Random) -> str:
    size = rng.choice(["S", "M", "L", "XL", "10 oz", "500ml", "12\"", "US 9", "EU 42", "2-Pack"])
    sep = rng.choice([" - ", " | ", ", ", " – ", " — ", " / "])
    code = f"{rng.choice('ABCDEFGHJKLMNPQRSTUVWXYZ')}{rng.choice('ABCDEFGHJK')}{rng.randint(100, 99999)}"
    return (
        f"{rng.choice(BRANDS)} {rng.choice(ADJECTIVES).title()} {rng.choice(PRODUCTS)}{sep}"
        f"{size}{sep}{rng.choice(ADJECTIVES).title()} #{code} ${rng.randint(5, 500)}.{rng.randint(0, 99):02d}"
    )


def _alt_text(rng: random.Random) -> str:
    parts = [rng.choice(NOUNS).title(), rng.choice(ADJECTIVES), rng.choice(NOUNS)]
    rng.shuffle(parts)
    s = " ".join(parts)
    deco = rng.random()
    if deco < 0.3:
        s = f"{s} {rng.choice(EMOJI)}"
    elif deco < 0.5:
        s = f"{s} {rng.choice(ENTITIES[:26])} {rng.choice(NOUNS)}"
    elif deco < 0.65:
        s = f"“{s}” — {rng.choice(NOUNS)}’s {rng.choice(NOUNS)}"
    elif deco < 0.8:
        s = f"{s} {rng.choice(URLS[:4])}"
    return s


def captions(n: int, seed: int = 0) -> list[str]:
    """``n`` realistic captions; about 80% pure ASCII, the rest non-ASCII."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.55:
            s = _english_caption(rng)
        elif r < 0.70:
            s = _product_title(rng)
        elif r < 0.80:
            s = _alt_text(rng)
        elif r < 0.86:
            s = f"{_english_caption(rng)} {rng.choice(ACCENTED)} {rng.choice(ACCENTED)}"
        elif r < 0.94:
            s = rng.choice(SENTENCES_INTL)
            if rng.random() < 0.5:
                s = f"{s} {rng.choice(SENTENCES_INTL)}"
            s = rng.choice([
                f"{s} {rng.randint(1, 2024)}",
                f"{s} ({_pseudo_word(rng).title()})",
                f"{rng.choice(BRANDS)}: {s}",
                f"{s} #{rng.choice(NOUNS)}{rng.randint(1, 99)}",
                f"{s} {rng.choice(EMOJI)} {rng.choice(ACCENTED)}",
            ])
        elif r < 0.97:
            s = f"{_english_caption(rng)} {rng.choice(EMOJI)}{rng.choice(EMOJI)}"
        else:
            s = f"{_english_caption(rng)} {rng.choice(ENTITIES[:12])} {rng.choice(NOUNS)}"
        out.append(s)
    return out


# ---------------------------------------------------------------------------
# Edge cases
# ---------------------------------------------------------------------------


def _mojibake(rng: random.Random) -> list[str]:
    out = list(MOJIBAKE_LITERALS)
    for src in MOJIBAKE_SOURCES:
        data = src.encode("utf-8")
        for enc in ("latin-1", "cp1252", "cp1251", "cp1250", "cp437", "mac_roman", "iso-8859-2"):
            bad = data.decode(enc, errors="replace")
            out.append(bad)
            out.append(f"The {bad} is here")
            out.append(bad.replace("\xa0", " "))  # nbsp lost in transit
            # double-encoded
            try:
                out.append(bad.encode("utf-8").decode(enc, errors="replace"))
            except UnicodeError:
                pass
    rng.shuffle(out)
    return out


def _systematic_chars() -> list[str]:
    """Every ASCII and Latin-1 code point, plus samples of many Unicode blocks, in context."""
    out = []
    for c in range(0x00, 0x100):
        ch = chr(c)
        out.append(f"a{ch}b")
        out.append(f"{ch}")
        out.append(f"word{ch}{ch}word {ch}")
    for start in (0x100, 0x250, 0x370, 0x400, 0x530, 0x590, 0x600, 0x900, 0xE00, 0x1100,
                  0x1E00, 0x2000, 0x2070, 0x20A0, 0x2100, 0x2190, 0x2460, 0x2500, 0x3000,
                  0x3040, 0x30A0, 0x3130, 0x4E00, 0xAC00, 0xD7B0, 0xFB00, 0xFE00, 0xFF00,
                  0xFFF0, 0x1D400, 0x1F300, 0x1F600, 0x1F900, 0xE0000):
        block = "".join(chr(c) for c in range(start, start + 48) if not 0xD800 <= c < 0xE000)
        out.append(block)
        out.append(" ".join(block))
        out.append(f"x{block[:8]}y")
    return out


def _long_texts(rng: random.Random) -> list[str]:
    out = []
    for k in range(40):
        words = [rng.choice(NOUNS + ADJECTIVES + VERBS) for _ in range(rng.randint(60, 400))]
        out.append(" ".join(words))
    out.append("a" * 5000)
    out.append("ab" * 3000)
    out.append("!" * 2000)
    out.append("1" * 300)
    out.append(" ".join(["supercalifragilisticexpialidocious"] * 50))
    out.append("日本語" * 200)
    out.append("👍🏽" * 100)
    out.append("&amp;" * 200)
    out.append("Ã©" * 200)
    out.append("\n".join(SENTENCES_INTL))
    out.append(("line one\r\nline two\r\n" * 30))
    out.append("x" * 1000 + "\n" + "&amp;" * 10 + "<" + "&amp;")
    return out


def _combos(rng: random.Random, n: int) -> list[str]:
    pools = [NOUNS, ADJECTIVES, ACCENTED, EMOJI, ENTITIES, MOJIBAKE_LITERALS, CONTRACTIONS,
             PUNCT, NUMBERS, URLS, WHITESPACE, ODD_CHARS]
    out = []
    for _ in range(n):
        k = rng.randint(1, 8)
        parts = []
        for _ in range(k):
            pool = rng.choice(pools)
            parts.append(rng.choice(pool))
        joiner = rng.choice(["", " ", " ", " ", "  ", "\t", "\n", "-", "&", "<"])
        out.append(joiner.join(parts))
    return out


def edge_texts(seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    out: list[str] = ["", " ", "\n", "\t \r\n", "a", "A", "I", "'", "''"]
    for pool in (ACCENTED, SENTENCES_INTL, EMOJI, ENTITIES, CONTRACTIONS, PUNCT, NUMBERS, URLS,
                 WHITESPACE, ODD_CHARS):
        out += pool
        out += [f"the {x} thing" for x in pool]
    out += [f"{a}{b}" for a in ENTITIES for b in ("", "x", " ", ";", "&amp;", "<")]
    out += [f"a<b {e}" for e in ENTITIES[:20]]
    out += [f"x {e}\ny <z {e}" for e in ENTITIES[:20]]  # ftfy: '<' disables unescaping per line
    out += [f"x <{e}\ny {e}" for e in ENTITIES[:20]]
    out += [f"{w}{c}{w2}" for w, w2 in (("hello", "world"), ("&am", "p;"), ("&#3", "9;"))
            for c in ("\x00", "\x01", "\x0b", "\x0c", "\x1b", "\x1c", "\x7f", "\r", "\x85", "\u200b")]
    out += [f"{e}\x1b[1m{e}" for e in ENTITIES[:5]]
    out += _mojibake(rng)
    out += _systematic_chars()
    out += _long_texts(rng)
    out += _combos(rng, 2500)
    return out


def corpus() -> list[str]:
    """Edge cases plus realistic captions (several thousand lines)."""
    return edge_texts() + captions(2500, seed=7)


if __name__ == "__main__":  # pragma: no cover
    c = corpus()
    print(len(c), "texts,", sum(map(len, c)), "characters")
