"""Speed and memory side by side: native methods, peft, the frozen-model floor, end to end."""
