from peftbench.harness.cli import main

raise SystemExit(main())
