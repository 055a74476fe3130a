from rgtp.cli import main

raise SystemExit(main())
