"""deepspeed --num_gpus 2 --module alpaca_ds.train --config launch/recipes/tiny.yaml"""

from alpaca_ds.train.loop import main

main()
