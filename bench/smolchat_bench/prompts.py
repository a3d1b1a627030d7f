"""The conversation every system is measured on (same text, greedy, same token budgets).

- FIRST: a first message under SYSTEM_PROMPT; asks for a long answer so 128 tokens are
  generated before the model stops on its own (decode rate needs a long run).
- FOLLOW_UP: the next message in the same chat (what users feel most: only the new turn
  should need prefilling).
- LONG: a ~500-token user message in a new chat (no system prompt, so no shared prefix with
  the earlier chat): its time to first token gives the prefill rate. Quick mode uses only the
  passage's first paragraph (~140 tokens): wllama prefills ~10 tok/s on 1 thread here.
- CONTEXTS (full mode): the context sweep. Each is a new chat with no system prompt whose
  reply decodes after ~500 and ~1,500 tokens of past; the first turn above (~50 tokens of
  past) is the short end. ctx1500's time to first token is also the prefill of a
  ~1,500-token prompt. The long prompt is the passage three times over.
"""

SYSTEM_PROMPT = "You are a friendly assistant. Answer in plain English, with care and detail."

FIRST = ("Write a story about a lighthouse keeper who finds a message in a bottle. "
         "Use at least four paragraphs.")

FOLLOW_UP = "Now tell the same story from the point of view of the person who wrote the message."

_PASSAGE = """\
The history of lighthouses begins with fires lit on hilltops to guide ships home at night.
Sailors in the ancient Mediterranean learned to watch for these beacons, and over the centuries
the fires moved into towers so that the light could be seen from farther away. The most famous
of the early towers stood at Alexandria, on the island of Pharos, and it was counted among the
wonders of the ancient world. It was said to be more than one hundred metres tall, and a great
fire burned at its top while polished bronze mirrors threw the light out over the water.

For a long time after the fall of Rome, few new towers were built, and the lights that remained
were often kept by monks or by local lords who charged a fee to passing ships. In the
seventeenth and eighteenth centuries, trade across the oceans grew quickly, and so did the number
of wrecks on dangerous coasts. Governments began to build and pay for lights, and engineers
competed to build towers that could stand on bare rocks in the open sea, where the waves were
strongest. The Eddystone light near Plymouth was rebuilt four times, because storms and fire
destroyed the earlier towers, until a design of interlocking granite blocks finally held.

The light itself changed as much as the towers. Candles gave way to oil lamps with wicks, then
to lamps that burned whale oil, colza oil, paraffin and finally gas. In 1822 the French physicist
Augustin Fresnel described a lens made of many rings of glass, each ring bending the light a
little more, so that almost all of the light from a single lamp could be gathered into one
strong beam. Fresnel lenses were soon placed in lighthouses around the world, and a light that
once reached a few kilometres could now be seen from more than thirty.

Keepers lived at the lights with their families, trimming the wicks, winding the clockwork that
turned the lens, cleaning the glass and writing the weather in the log every few hours. On rock
stations the keepers worked in shifts of several weeks and were brought back to shore by boat
when the sea allowed it. During the twentieth century most lights became automatic, powered by
electricity and watched from far away, and the last keepers left their towers. Many of the old
towers are now museums, and visitors climb their stairs to look out over the same dangerous
waters that the lights were built to guard.
"""

_ASK = "\nSummarize the text above in two sentences."
LONG = _PASSAGE + _ASK
LONG_QUICK = _PASSAGE.split("\n\n")[0] + "\n" + _ASK


def long_prompt(quick: bool) -> str:
    return LONG_QUICK if quick else LONG

CONTEXT_1500 = (_PASSAGE + "\n") * 3 + _ASK
#: turn name -> user message (the ~50-token end of the sweep is the "first" turn)
CONTEXTS = {"ctx500": LONG, "ctx1500": CONTEXT_1500}
#: new tokens per context-sweep turn (enough for a steady decode rate at that past)
CONTEXT_TOKENS = 48
