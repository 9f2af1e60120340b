from ibkr_recover.cli import main

main()
