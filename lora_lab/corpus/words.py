"""The vocabulary of the story grammar in :mod:`lora_lab.corpus.stories` (data only, no logic).

Every answer the fine-tuning task asks for is one word from these lists (a name, a
place, an object, a colour, a feeling or an animal), so that exact match is a fair metric.
"""

from __future__ import annotations

NAMES = (
    "Tom", "Mia", "Sam", "Lily", "Ben", "Anna", "Max", "Emma", "Leo", "Zoe", "Jack", "Lucy",
    "Noah", "Ella", "Finn", "Ruby", "Owen", "Ivy", "Jake", "Nora", "Luke", "Rose", "Adam",
    "Kate", "Ryan", "Grace", "Eli", "Hannah", "Dan", "Amy", "Paul", "Jane", "Oscar", "Alice",
    "Hugo", "Clara", "Liam", "Eva", "Theo", "Maya", "Nick", "Sara", "Alex", "Olivia", "Toby",
    "Daisy", "Oliver", "Chloe", "Harry", "Sophie", "Jamie", "Molly", "Carl", "Nina", "Ivan",
    "Lena", "Peter", "Holly", "Tim", "Rita", "Kevin", "Julia", "Omar", "Layla", "Ravi", "Priya",
    "Kenji", "Yuki", "Carlos", "Lucia", "Diego", "Elena", "Felix", "Hazel", "George", "Isla",
    "Henry", "Luna", "Jonah", "Maria", "Arthur", "Fiona", "Ethan", "Gemma", "Simon", "Heidi",
    "Marco", "Pia", "Victor", "Wendy", "Bruno", "Tara", "Dev", "Asha", "Kai", "Leah", "Milo",
    "Nell", "Ali", "Bella", "Zara", "Joe", "Kim", "Rosa", "Abel", "Iris", "Otto", "Vera",
)

# place -> preposition used with it ("in the park", "at the beach", "by the lake")
PLACES = {
    "park": "in", "garden": "in", "forest": "in", "kitchen": "in", "yard": "in", "field": "in",
    "library": "in", "barn": "in", "cave": "in", "meadow": "in", "attic": "in", "bedroom": "in",
    "classroom": "in", "orchard": "in", "village": "in", "town": "in", "woods": "in",
    "shed": "in", "hall": "in", "jungle": "in", "beach": "at", "school": "at", "farm": "at",
    "shop": "at", "market": "at", "zoo": "at", "playground": "at", "station": "at",
    "bakery": "at", "museum": "at", "camp": "at", "fair": "at", "harbor": "at",
    "lake": "by", "river": "by", "pond": "by", "bridge": "by", "hill": "on", "mountain": "on",
    "island": "on", "boat": "on", "roof": "on",
}

OBJECTS = (
    "ball", "kite", "hat", "box", "book", "cup", "shell", "key", "coin", "drum", "doll", "car",
    "bike", "flower", "apple", "cake", "pencil", "ribbon", "bell", "lamp", "map", "rock",
    "stick", "leaf", "feather", "sock", "shoe", "scarf", "bag", "basket", "bucket", "blanket",
    "card", "clock", "crown", "ring", "star", "stone", "whistle", "wagon", "umbrella", "pillow",
    "mug", "plate", "spoon", "candle", "jar", "rope", "net", "brush", "letter", "button",
    "marble", "sticker", "balloon", "puzzle", "robot", "train", "truck", "teapot", "bowl",
    "mask", "flag", "kettle", "comb", "sled", "tent", "paper", "cookie", "egg", "pear",
)

COLOURS = ("red", "blue", "green", "yellow", "pink", "purple", "orange", "white", "black",
           "brown", "grey", "gold", "silver")

FEELINGS = ("happy", "sad", "glad", "proud", "scared", "angry", "tired", "excited",
            "surprised", "calm", "sorry", "shy", "brave", "worried", "lonely", "curious",
            "cheerful", "grumpy", "hungry", "sleepy", "upset", "thankful")

ANIMALS = ("cat", "dog", "fox", "rabbit", "bear", "duck", "frog", "owl", "mouse", "horse",
           "pig", "cow", "goat", "sheep", "hen", "bird", "fish", "turtle", "lion", "tiger",
           "monkey", "deer", "squirrel", "wolf", "elephant", "giraffe", "zebra", "puppy",
           "kitten", "pony", "bee", "snail", "crab", "seal", "penguin", "panda", "hedgehog",
           "badger", "otter", "goose")

ADJECTIVES = ("big", "small", "quiet", "busy", "old", "new", "sunny", "dark", "bright",
              "warm", "cold", "wet", "noisy", "lovely", "huge", "tiny", "clean",
              "messy", "pretty", "strange", "windy", "muddy", "shady", "peaceful")

# ways of getting an object: base form, past tense, participle
GET_VERBS = (("find", "found", "found"), ("make", "made", "made"), ("buy", "bought", "bought"),
             ("win", "won", "won"), ("spot", "spotted", "spotted"))

# things done later to an object someone has: base, past, participle, place prep phrase
DO_VERBS = (("hide", "hid", "hidden"), ("drop", "dropped", "dropped"), ("wash", "washed", "washed"),
            ("fix", "fixed", "fixed"), ("lose", "lost", "lost"),
            ("carry", "carried", "carried"), ("bury", "buried", "buried"))

ANIMAL_DOINGS = ("sleeping", "eating", "running", "playing", "hiding", "sitting", "jumping",
                 "swimming", "singing", "resting")

WEATHER = ("The sun was warm.", "It was a rainy day.", "The wind was cold.",
           "The sky was blue and clear.", "It was snowing a little.", "The air smelled of rain.",
           "Big clouds moved across the sky.", "It was a hot summer day.",
           "The leaves were falling.", "The morning was foggy.")

TIMES = ("One morning", "One day", "On Monday", "After lunch", "Last summer", "One evening",
         "On a sunny day", "Early in the morning", "On Saturday", "Before dinner", "At noon",
         "One winter day")

LINKERS = ("Later", "After that", "Then", "Soon", "The next day", "A little later",
           "That afternoon", "In the evening", "Before long", "After a while")

ENDINGS = ("Then they went home.", "It was a good day.", "They played until the sun went down.",
           "The end.", "Everyone had fun.", "They laughed all the way home.",
           "That night, everyone slept well.", "It was the best day of the summer.",
           "They went home for dinner.", "And that was the end of the day.")
