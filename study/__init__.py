"""The LeNet-5 + SAM study: its recipes and record schema, its pre-registered plan, the statistics
that apply the plan, and the report and figures made from the records. Imports ``lenet_utils`` and
``analysis``; neither imports it."""
