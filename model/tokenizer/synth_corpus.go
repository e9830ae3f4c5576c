package tokenizer

// synthCorpus is the training text for Synthesize: a few KB of plain
// English written for this package, with some digits, punctuation,
// contractions and line breaks so that the learned merges look like those
// of a real tokenizer.
const synthCorpus = `The harbour town woke slowly. Fog rolled in from the grey water, and the
first boats left the quay before the bakery had opened its shutters. By
seven o'clock the market square was full of carts, crates of apples and
the smell of fresh bread.

Mara kept the lighthouse at the end of the northern pier. She had kept it
for 23 years, and her father had kept it for 31 years before her. Every
evening she climbed the ninety-nine steps, cleaned the great lens, trimmed
the wick and wrote the time in the logbook: "Lamp lit at 18:42. Wind from
the west, force 4. Visibility good."

People in the town said she didn't need the logbook, that she remembered
every storm since 1987. That wasn't true, of course. She remembered the big
ones: the winter the ice closed the harbour, the night the ferry lost its
engine, and the spring when the whole coast flooded and the water reached
the second step of the church.

On quiet nights she read. She liked books about the stars, about the
history of the coast, about birds and how they find their way across the
sea. She could name every bird by its song, and she kept a list of the
ones she had seen from the gallery: gulls, terns, a heron, two owls, and
once, in October, a small brown bird nobody in the town could identify.

"You'll ruin your eyes," the doctor told her. "Reading by lamplight at
your age." She laughed and said that a lighthouse keeper who couldn't read
by lamplight wasn't much of a keeper at all.

In the spring the town council wrote to her. The lighthouse would be
automated, they said; a machine would switch the lamp on at dusk and off
at dawn, and a sensor would measure the fog. There'd be no need for a
keeper any more. They thanked her for her service and offered her a small
house near the school, with a garden and a view of the hills.

She read the letter twice, folded it and put it in the drawer with the old
charts. Then she went up the steps, as she always did, and lit the lamp.

The engineers arrived in June. There were three of them: a tall woman with
a notebook, a young man who talked about voltage and circuits, and an old
technician who said very little and watched the sea. They worked for five
days. They installed panels, cables, a battery the size of a wardrobe and
a small grey box with a blinking green light.

On the last evening the old technician climbed the steps with her. They
stood on the gallery and watched the sun go down behind the islands.

"It's a good light," he said. "It'll run for fifty years without anyone
touching it."

"And who'll watch the sea?" she asked.

He didn't answer. He just nodded, and after a while he went back down.

Mara moved into the house by the school in July. She planted beans,
tomatoes and a row of sunflowers. She walked to the pier every evening at
the same time, and every evening the lamp came on by itself, exactly on
time, and swept its long white beam across the water.

But in November a storm came that was bigger than any in the logbook. The
wind reached 120 kilometres per hour. Waves broke over the pier and the
power failed across the whole town: the streets went dark, the school went
dark, and at 21:15 the lighthouse went dark too. The battery had been
installed on the ground floor, and the sea had found it.

Mara saw it from her window. She put on her coat and boots, took the old
oil lamp from the shelf and walked out into the rain. It took her forty
minutes to reach the pier. The door of the lighthouse was stuck, and she
had to force it with her shoulder.

She climbed the ninety-nine steps in the dark, counting them as she went.
At the top she lit the oil lamp and set it in front of the great lens, the
way her father had shown her when she was nine years old. It wasn't as
bright as the electric lamp, but it was bright enough.

At 2:30 in the morning a fishing boat came round the point, low in the
water, its engine coughing. The crew saw the light and turned towards it,
and twenty minutes later they were tied up safely at the quay. There were
four men on board; one of them was the young engineer, who'd gone out that
afternoon to test a radio and had been caught by the storm.

The next week the council met again. They didn't remove the machine, but
they moved the battery to the top floor, and they asked Mara if she would
keep the key. She said yes.

She still lives in the house by the school. Her sunflowers are the tallest
in the street. Every evening at dusk she walks to the pier, checks that
the lamp has come on, and writes one line in a new logbook: the date, the
time, the wind and the state of the sea. Then she goes home, makes a cup
of tea and reads about the stars.

Some questions people ask: How tall is the lighthouse? (About 34 metres.)
How far can the light be seen? (Roughly 22 nautical miles, or 41 km, on a
clear night.) Is it open to visitors? Yes - on Saturdays from 10:00 to
16:00, April to September; tickets cost 5 euros, or 3 for children.
`
