"""Writes nlptl's built-in sample data (original, generated text; no copied data).

Run: python tools/make_sample_data.py

Every sentence is produced from templates and word lists defined in this file,
using random.Random with fixed seeds, so repeated runs give byte-identical files:

  nlptl/assets/general.txt           general prose for pretraining (one paragraph per line)
  nlptl/assets/reviews.txt           unlabelled reviews for domain adaptation (one per line)
  nlptl/assets/sentiment_{train,eval,test}.csv   labelled sentences, header text,label
                                     (label 0 = negative, 1 = positive)
"""
import csv
import random
import re
from pathlib import Path

SEED = 1234
OUT = Path(__file__).resolve().parent.parent / "nlptl" / "assets"
N_GENERAL, N_REVIEWS = 3000, 2000
SPLITS = {"train": 1600, "eval": 300, "test": 300}


def L(text):
    """Split a '|'-separated word list."""
    return [w.strip() for w in text.split("|")]


# ---------------------------------------------------------------- shared words
W = {
    "name": L("Anna|Tom|Mira|Jonas|Priya|Leo|Sofia|Daniel|Grace|Omar|Lena|Sam|Ruth|Felix|Nora|Hugo|Maya|Ben|Ivy|Tariq|Clara|Ezra"),
    "surname": L("Hollis|Marsh|Penrose|Calloway|Dunmore|Ashby|Fenn|Wrenfield|Talbot|Orrin"),
    "city": L("Calderport|Fenwick|Brightwater|Ashford Vale|Northmere|Tallis Cove|Redhollow|Westbury Green|Kestrel Point|Dunmoor|Lowford|Haverly"),
    "region": L("northern valleys|coast|eastern plains|hill country|river delta|southern islands"),
    "day": L("Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday"),
    "season": L("spring|summer|autumn|winter"),
    "color": L("red|blue|yellow|green|white|pale grey|orange|deep purple"),
    "waterway": L("river|canal|lake|harbour|stream|estuary"),
    "place": L("valley|old bridge|town square|meadow|harbour wall|park|forest edge|village green"),
    "building": L("library|town hall|school|bridge|mill|lighthouse|market hall|museum|clock tower|railway station"),
    "buildings": L("houses|shops|cafes|warehouses|cottages"),
    "landscape": L("pine forests|open farmland|rolling hills|quiet villages|wide marshes|rocky valleys"),
    "animal": L("fox|heron|otter|badger|owl|deer|hedgehog|hare|kingfisher|beaver|seal|woodpecker"),
    "animals": L("foxes|herons|otters|badgers|owls|deer|hedgehogs|hares|swallows|beavers|seals|geese"),
    "food": L("potatoes|apples|onions|rice|flour|lentils|carrots|tomatoes|beans|pears"),
    "veg": L("potatoes|onions|carrots|tomatoes|peppers|leeks|courgettes|mushrooms"),
    "dish": L("vegetable soup|tomato sauce|lentil stew|rice pudding|onion tart|bean curry|apple crumble|noodle broth"),
    "baked": L("bread|pie|apple cake|cheese scones|oat biscuits|pastry"),
    "drink": L("tea|coffee|hot chocolate|mint tea|warm milk"),
    "sport": L("football|rugby|hockey|volleyball|basketball|cricket"),
    "team": L("Rovers|Harriers|United|Wanderers|Athletic|Mariners"),
    "race": L("city marathon|coastal half marathon|mountain relay|river swim|spring cycle race"),
    "device": L("printer|self-service kiosk|reading tablet|weather station|3D printer|sound system"),
    "event": L("flood|fire|storm|harsh winter|drought|earthquake"),
    "trade": L("wool|salt|spices|timber|glass|silk|tea"),
    "n": [str(i) for i in range(2, 13)],
    "big": [str(i) for i in range(15, 95, 5)],
    "year": [str(y) for y in range(1610, 1990, 7)],
    "temp": [str(t) for t in range(-4, 33)],
    "hour": L("six|seven|half past six|eight"),
}
W["a_animal"] = [("an " if a[0] in "aeiou" else "a ") + a for a in W["animal"]]

# ------------------------------------------------------- general prose topics
TOPICS = {
    "weather": [
        "The morning in {city} began with a cold mist, and by noon the sky had cleared completely.",
        "Forecasters expected heavy rain across the {region} on {day}, with temperatures near {temp} degrees.",
        "After {n} days of strong wind, the {waterway} near {city} rose above its usual level.",
        "{name} looked at the grey clouds before leaving home and decided to carry an umbrella.",
        "A light breeze from the sea carried the smell of rain over the {place}.",
        "In a cold winter, the lake near {city} can freeze, and children skate on it after school.",
        "The fog lifted slowly, revealing the {place} and the hills behind it.",
        "Snow fell quietly through the night, and by morning the roads out of {city} were closed.",
        "Thunder rolled across the {region} for an hour, but only a few drops of rain reached the ground.",
    ],
    "cities": [
        "{city} is a small town built along the {waterway}, and its streets are lined with old {buildings}.",
        "The market square in {city} is surrounded by {buildings} painted {color} and {color}.",
        "Every {day}, a ferry leaves {city} for {city} and returns before dark.",
        "Most people in {city} travel to work by bus, although many prefer to walk or cycle.",
        "The population of {city} grew quickly after a new {building} opened in {year}.",
        "A narrow street leads from the station in {city} down to the {waterway}, where small boats are tied up.",
        "On {day} evenings the main street of {city} is closed to cars, and musicians play outside the {building}.",
        "The council of {city} plans to plant {big} new trees along the {waterway} next {season}.",
    ],
    "science": [
        "Water boils at a lower temperature high on a mountain, because the air pressure there is lower.",
        "Plants use sunlight, water and carbon dioxide to make sugar, and they release oxygen as they do so.",
        "Sound travels faster through water than through air, which is why whales can hear each other over long distances.",
        "A rainbow appears when sunlight is bent and reflected inside falling raindrops.",
        "Copper carries electricity well, which is one reason it is used in so many wires.",
        "The Moon takes about twenty-seven days to travel once around the Earth.",
        "In the school experiment, {name} measured how quickly ice melted in water at different temperatures.",
        "The students recorded their results in a table and drew a graph to compare the {n} samples.",
        "Under a simple microscope, a drop of pond water turns out to be full of tiny living things.",
        "Heat moves from a warmer object to a cooler one until both reach the same temperature.",
    ],
    "cooking": [
        "To make a simple {dish}, chop {n} {veg} and cook them gently in a little oil.",
        "{name} added a pinch of salt to the {dish} and let it simmer for {big} minutes.",
        "Fresh {veg} should be kept in a cool, dry place away from direct sunlight.",
        "Bake the {baked} in a hot oven until the top turns golden brown.",
        "Many families in {city} eat {dish} on {day} evenings, especially in {season}.",
        "Stir the mixture slowly, then pour it into a warm bowl and serve it with fresh {baked}.",
        "{name} learned to make {baked} from a grandparent who never measured anything.",
        "Before you start cooking, wash your hands and read the whole recipe from beginning to end.",
    ],
    "travel": [
        "The train from {city} to {city} takes about {n} hours and passes through {landscape}.",
        "{name} packed a small bag, a map and a bottle of water before setting off for {city}.",
        "Visitors often come in {season}, when the {landscape} around {city} look their best.",
        "The road climbs through {landscape} before it drops down towards the coast.",
        "At the station, a board listed departures to {city}, {city} and {city}.",
        "They stayed in a small guesthouse near the {place} and walked everywhere during their visit.",
        "The ferry crossing was rough, so most passengers stayed inside and drank {drink}.",
        "{name} and {name} hired bicycles and rode along the {waterway} for most of the afternoon.",
    ],
    "history": [
        "In {year}, the people of {city} built a stone {building} beside the {waterway}.",
        "According to local records, a great {event} struck {city} in {year}, and the town took {n} years to recover.",
        "The first school in {city} opened in {year} with only {big} pupils and one teacher.",
        "A merchant named {name} {surname} is remembered for bringing {trade} to {city} by sea.",
        "The old {building} in {city} still stands today, although its roof was replaced in {year}.",
        "Letters from {year} describe a busy market where farmers sold {food} and {trade}.",
        "After the {event} of {year}, the town council of {city} moved the market to higher ground.",
    ],
    "animals": [
        "The {animal} is most active at dawn and dusk, when the {place} is quiet.",
        "Volunteers counted {big} {animals} along the {waterway} outside {city} during the spring survey.",
        "Young {animals} stay close to their parents for the first weeks of their lives.",
        "{A_animal} was seen near the {building} in {city}, which surprised many local people.",
        "In {season}, {animals} often search for food closer to farms and gardens.",
        "The nature reserve near {city} protects {animals}, {animals} and many kinds of insects.",
        "{name} sat still by the {waterway} for an hour and finally saw {a_animal}.",
    ],
    "sports": [
        "The {city} {team} won their {sport} match on {day} after a close second half.",
        "{name} has trained for the {race} for {n} months, training before work each morning.",
        "The final was played in heavy rain, and both teams struggled to keep their footing.",
        "More than {big} thousand people watched the {sport} final at the new stadium in {city}.",
        "The coach asked the players to rest for a day before the next game.",
        "{name} joined the {sport} club in {city} last {season} and now plays every {day}.",
        "The {race} starts at the {building} and finishes beside the {waterway}.",
    ],
    "technology": [
        "The new {device} in the {city} library can be used by anyone with a library card.",
        "Engineers in {city} are testing sensors that measure the water level of the {waterway}.",
        "A computer program follows a list of instructions, one step at a time.",
        "{name} spent the afternoon updating the software on the office computers.",
        "Solar panels on the roof of the {building} provide power for the lights and heaters.",
        "The school in {city} bought a {device}, and the pupils now use it every {day}.",
        "When the network failed, {name} restarted the router and the connection came back within minutes.",
    ],
    "daily": [
        "{name} woke up early, made a cup of {drink} and read the news by the window.",
        "On {day} mornings, the bakery near the {place} opens at {hour}.",
        "After school, the children walked home along the {waterway} and stopped to watch the ducks.",
        "{name} and {name} spent the weekend painting the kitchen and fixing the garden fence.",
        "The bus was late again, so {name} decided to cycle to work.",
        "Every evening the family sits down together for dinner and talks about the day.",
        "{name} keeps a small notebook for shopping lists, phone numbers and ideas.",
        "On rainy afternoons, {name} likes to sort old photographs and drink {drink}.",
    ],
}

# ------------------------------------------------------- review domains
DOMAINS = {
    "film": {
        "thing": L("film|movie|sequel|thriller|comedy|drama|documentary|mystery"),
        "aspect": L("the acting|the plot|the script|the pacing|the soundtrack|the ending|the dialogue|the camera work|the lead actor|the supporting cast|the villain|the final act|the humour|the editing"),
        "pos_phrase": L("kept me on the edge of my seat|made me laugh out loud|had a beautiful score|moved me to tears|felt fresh and original|stayed with me for days|had a clever twist I did not see coming"),
        "neg_phrase": L("dragged on far too long|had a twist I guessed in ten minutes|wasted a talented cast|nearly put me to sleep|felt like a cheap copy of better films|made no sense at all|ended without any payoff"),
        "pos_end": L("I would watch it again|I will recommend it to friends"),
        "neg_end": L("I will not watch it again|I wanted my evening back"),
        "context": L("I watched it with my family on a {day} night|We saw it at the cinema on opening weekend|I streamed it after a friend mentioned it|It runs for about two hours"),
    },
    "gadget": {
        "thing": L("phone|tablet|laptop|smartwatch|e-reader|camera|fitness tracker|games handheld"),
        "aspect": L("the battery|the screen|the delivery|the packaging|the charger|the build quality|the setup|the customer support|the price|the app|the design|the sound"),
        "pos_phrase": L("arrived two days early|was easy to set up|feels sturdy and well made|does exactly what it promises|lasts all week on one charge|is fast and responsive|was a great gift"),
        "neg_phrase": L("stopped working after a week|arrived scratched and dented|feels cheap and flimsy|dies before lunchtime|keeps disconnecting|overheats after a few minutes|took a month to arrive"),
        "pos_end": L("I would buy it again|I use it every day now"),
        "neg_end": L("I regret buying it|I sent it back"),
        "context": L("I bought it to replace my old one|I have used it every day for {n} weeks|It came in a plain brown box|I ordered the {color} version"),
    },
    "home": {
        "thing": L("blender|kettle|vacuum cleaner|coffee machine|desk lamp|toaster|rice cooker|fan"),
        "aspect": L("the delivery|the packaging|the build quality|the price|the instructions|the design|the motor|the cord|the customer support|the handle|the noise level"),
        "pos_phrase": L("arrived well packed and on time|is quiet and powerful|looks great in our kitchen|was simple to assemble|cleans up in seconds|works perfectly every morning|is worth every penny"),
        "neg_phrase": L("broke the first time we used it|leaks all over the counter|is louder than a lawnmower|arrived with parts missing|smells of burning plastic|stopped heating after a month|was a waste of money"),
        "pos_end": L("I would buy it again|it was money well spent"),
        "neg_end": L("I regret buying it|it was money thrown away"),
        "context": L("We use it almost every day|I bought it during the {season} sale|It replaced one we had for {n} years|My partner chose this model"),
    },
    "restaurant": {
        "thing": L("restaurant|cafe|bistro|pizzeria|noodle bar|diner|bakery|tea room"),
        "aspect": L("the service|the soup|the dessert|the portion size|the waiter|the menu|the atmosphere|the pasta|the bread|the flavour|the coffee|the booking process|the music|the curry"),
        "pos_phrase": L("served the best soup I have had in years|had friendly and attentive staff|offered generous portions at fair prices|made us feel welcome from the start|had a cosy and relaxed atmosphere|got every dish exactly right"),
        "neg_phrase": L("kept us waiting an hour for our food|served cold and greasy chips|had a rude waiter who ignored us|charged far too much for tiny portions|got our order wrong twice|was dirty and far too noisy"),
        "pos_end": L("I would go back tomorrow|we are already planning our next visit"),
        "neg_end": L("I would not go back|we will eat elsewhere next time"),
        "context": L("We went on a {day} evening|We booked a table for {n}|I stopped in for lunch on a {day}|It is close to the station"),
    },
}

S = {  # sentiment vocabulary shared by all domains
    "pos_adj": L("excellent|superb|wonderful|brilliant|fantastic|impressive|lovely|outstanding|great|first-class|terrific|delightful"),
    "neg_adj": L("awful|terrible|disappointing|poor|dreadful|mediocre|weak|sloppy|underwhelming|frustrating|a letdown|a mess"),
    "mild_pos": L("decent|nice|pleasant|fine|good enough|solid"),
    "mild_neg": L("a bit weak|slightly disappointing|not great|rather average|nothing special|a little rough"),
    "intens": L("really|truly|absolutely|genuinely|quite|surprisingly|honestly"),
    "neg_pos": L("not bad at all|far from boring|never dull for a moment|not disappointing in the slightest|better than I feared|not perfect, but very good"),
    "neg_neg": L("not good at all|far from impressive|not worth the hype|not as good as the reviews claimed|hardly memorable|not what I hoped for"),
    "pos_end": L("I loved it|I left very happy|I am glad I tried it|it was a real pleasure"),
    "neg_end": L("it was a waste of time|I left disappointed|I will not bother again|it was a real letdown"),
    "neutral": L("it was fine, nothing special|it does what it says and no more|it was about what I expected|I have mixed feelings about it|it was okay for the price"),
}

POS_T = [
    "{Aspect} was {intens} {pos_adj}.",
    "{Aspect} was {neg_pos}.",
    "This {thing} {pos_phrase}, and {aspect} was {pos_adj} too.",
    "I was worried about {aspect}, but it turned out to be {pos_adj}.",
    "{Aspect} was {mild_neg}, but this {thing} {pos_phrase} and overall {pos_end}.",
    "I expected very little from this {thing}, but it was {intens} {pos_adj}.",
    "Honestly, {aspect} could not have been better.",
    "I would happily recommend this {thing} to anyone.",
    "Not a single complaint about {aspect}; {pos_end}.",
    "Despite {aspect} being {mild_neg}, {pos_end}.",
    "The reviews were mixed, but this {thing} {pos_phrase}.",
]
NEG_T = [
    "{Aspect} was {intens} {neg_adj}.",
    "{Aspect} was {neg_neg}.",
    "This {thing} {neg_phrase}, and {aspect} was {neg_adj} too.",
    "I wanted to like {aspect}, but it was {neg_adj}.",
    "{Aspect} was {mild_pos}, but this {thing} {neg_phrase} and overall {neg_end}.",
    "I expected a lot from this {thing}, but it was {intens} {neg_adj}.",
    "Honestly, {aspect} could not have been worse.",
    "I would not recommend this {thing} to anyone.",
    "Sadly, this {thing} was not worth the money; {neg_end}.",
    "Even though {aspect} was {mild_pos}, {neg_end}.",
    "The reviews were glowing, but this {thing} {neg_phrase}.",
]
NEUTRAL_T = [
    "{Aspect} was {mild_pos}, and {aspect} was {mild_neg}.",
    "Overall {neutral}.",
    "{Context}.",
    "This {thing} {pos_phrase}, although {aspect} was {mild_neg}.",
    "{Aspect} was {mild_neg}, but {aspect} was {mild_pos}.",
]


def fill(rng, template, words):
    """Replace each {key} with a random entry of words[key]; {Key} capitalises it.

    Entries may themselves contain {keys}. Within one sentence the same value is
    not drawn twice for a key (so no 'from Fenwick to Fenwick').
    """
    used = {}

    def sub(m):
        key = m.group(1)
        lower = key[0].lower() + key[1:]
        options = [w for w in words[lower] if w not in used.get(lower, ())] or words[lower]
        value = rng.choice(options)
        used.setdefault(lower, set()).add(value)
        value = fill(rng, value, words) if "{" in value else value
        return value[0].upper() + value[1:] if key[0].isupper() else value

    text = re.sub(r"\{(\w+)\}", sub, template)
    return text[0].upper() + text[1:]


def unique(rng, make, count, banned=(), tries=200000):
    """Draw from make() until count distinct strings (not in banned) are found."""
    seen, out = set(banned), []
    for _ in range(tries):
        s = make(rng)
        if s not in seen:
            seen.add(s)
            out.append(s)
            if len(out) == count:
                return out
    raise RuntimeError(f"only {len(out)} unique items of {count} after {tries} tries")


def general_paragraph(rng):
    topic = rng.choice(sorted(TOPICS))
    k = rng.choices([1, 2], weights=[6, 1])[0]
    return " ".join(fill(rng, t, W) for t in rng.sample(TOPICS[topic], k))


def domain_words(domain):
    d = DOMAINS[domain]
    ends = {k: S[k] + d[k] for k in ("pos_end", "neg_end")}
    return {**W, **S, **d, **ends}


def labelled_sentence(rng, label):
    domain = rng.choice(sorted(DOMAINS))
    text = fill(rng, rng.choice(POS_T if label else NEG_T), domain_words(domain))
    return text if 5 <= len(text.split()) <= 25 else labelled_sentence(rng, label)


def review(rng, banned):
    """One review of 1-4 sentences, none of which is a labelled sentence."""
    domain = rng.choice(sorted(DOMAINS))
    words = domain_words(domain)
    words["thing"] = [rng.choice(words["thing"])]  # one product/film/place per review
    tone = rng.choices(["pos", "neg", "neutral", "mixed"], weights=[4, 4, 2, 2])[0]
    pools = {"pos": [POS_T], "neg": [NEG_T], "neutral": [NEUTRAL_T], "mixed": [POS_T, NEG_T, NEUTRAL_T]}[tone]
    parts = []
    if rng.random() < 0.4:
        parts.append(fill(rng, "{Context}.", words))
    for _ in range(rng.choices([1, 2, 3], weights=[4, 4, 1])[0]):
        s = fill(rng, rng.choice(rng.choice(pools)), words)
        if s not in banned and s not in parts:
            parts.append(s)
    if len(parts) < 4 and rng.random() < 0.35:
        end = {"pos": "pos_end", "neg": "neg_end"}.get(tone, "neutral")
        closing = fill(rng, "{" + end + "}.", words)
        if closing.lower()[:-1] not in " ".join(parts).lower():
            parts.append(closing)
    return " ".join(parts[:4]) or review(rng, banned)


def main():
    OUT.mkdir(parents=True, exist_ok=True)

    # 1. labelled sentences: one pool per label, then cut into disjoint splits.
    rng = random.Random(SEED)
    total = sum(SPLITS.values())
    pos = unique(rng, lambda r: labelled_sentence(r, 1), total // 2)
    neg = unique(rng, lambda r: labelled_sentence(r, 0), total // 2, banned=pos)
    splits, start = {}, 0
    for name, size in SPLITS.items():
        rows = [(s, 1) for s in pos[start:start + size // 2]] + [(s, 0) for s in neg[start:start + size // 2]]
        rng.shuffle(rows)
        splits[name] = rows
        start += size // 2
        with open(OUT / f"sentiment_{name}.csv", "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
            writer.writerow(["text", "label"])
            writer.writerows(rows)

    # 2. unlabelled reviews (never containing a labelled sentence verbatim).
    labelled = set(pos) | set(neg)
    rng = random.Random(SEED + 1)
    reviews = unique(rng, lambda r: review(r, labelled), N_REVIEWS)
    (OUT / "reviews.txt").write_text("\n".join(reviews) + "\n", encoding="utf-8")

    # 3. general prose.
    rng = random.Random(SEED + 2)
    general = unique(rng, general_paragraph, N_GENERAL)
    (OUT / "general.txt").write_text("\n".join(general) + "\n", encoding="utf-8")

    check(splits, reviews, general)


def check(splits, reviews, general):
    seen = {}
    for name, size in SPLITS.items():
        with open(OUT / f"sentiment_{name}.csv", encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f))
        assert rows[0] == ["text", "label"], rows[0]
        rows = rows[1:]
        assert [(t, int(y)) for t, y in rows] == splits[name]
        assert len(rows) == size, (name, len(rows))
        assert sum(y == "1" for _, y in rows) == size // 2, f"{name} not balanced"
        texts = [t for t, _ in rows]
        assert len(set(texts)) == len(texts), f"duplicates in {name}"
        assert all(5 <= len(t.split()) <= 25 for t in texts)
        for t in texts:
            assert t not in seen, f"{t!r} in both {seen[t]} and {name}"
            seen[t] = name
    review_text = "\n".join(reviews)
    for t, split in seen.items():
        if split != "train":
            assert t not in review_text, f"{split} sentence leaks into reviews: {t!r}"
    assert len(reviews) == N_REVIEWS == len(set(reviews)) and all(reviews)
    assert len(general) == N_GENERAL == len(set(general)) and all(general)
    for name in ["general.txt", "reviews.txt"] + [f"sentiment_{s}.csv" for s in SPLITS]:
        data = (OUT / name).read_bytes()
        assert b"\r" not in data and data.endswith(b"\n")
        lines = data.count(b"\n")
        print(f"{name:24s} {len(data) / 1024:7.1f} KB {lines:6d} lines")


if __name__ == "__main__":
    main()
